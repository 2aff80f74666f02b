"""Optuna objects from the sweeper's config: samplers, pruners, and the prune signal."""
from __future__ import annotations

import warnings

import optuna

from hydra_plugins.ranking_exp_sweeper.config import PrunerConfig, SamplerConfig
from ranking_exp.errors import ConfigError, RunStopped


class TrialPruned(optuna.TrialPruned, RunStopped):
    """Optuna's prune signal that ranking_exp's tracker also understands (MLflow tag state=PRUNED)."""

    state = "PRUNED"


def make_sampler(c: SamplerConfig, distributions) -> optuna.samplers.BaseSampler:
    if c.kind == "tpe":
        return optuna.samplers.TPESampler(seed=c.seed, n_startup_trials=c.n_startup_trials, multivariate=c.multivariate)
    if c.kind == "random":
        return optuna.samplers.RandomSampler(seed=c.seed)
    if c.kind == "qmc":  # scrambled Sobol points; proposals never depend on results (categoricals drawn at random)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=c.seed,
                                              warn_independent_sampling=False)
    if c.kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=c.seed)
    if c.kind == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=c.seed, population_size=c.population_size)
    grid = {}
    for key, d in distributions.items():
        if not isinstance(d, optuna.distributions.CategoricalDistribution):
            raise ConfigError(f"hydra.sweeper.params.{key}: the grid sampler needs choice(...) values")
        grid[key] = list(d.choices)
    return optuna.samplers.GridSampler(grid, seed=c.seed)


def make_pruner(c: PrunerConfig) -> optuna.pruners.BasePruner:
    if c.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=c.n_startup_trials, n_warmup_steps=c.n_warmup_steps,
                                           interval_steps=c.interval_steps)
    if c.kind in ("percentile", "patient"):
        pruner = optuna.pruners.PercentilePruner(c.percentile, n_startup_trials=c.n_startup_trials,
                                                 n_warmup_steps=c.n_warmup_steps, interval_steps=c.interval_steps)
        if c.kind == "percentile":
            return pruner
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and built once per trial: say it nowhere
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(pruner, patience=c.patience, min_delta=c.min_delta)
    if c.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=c.min_resource, max_resource=c.max_resource,
                                              reduction_factor=c.reduction_factor)
    if c.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=c.min_resource, reduction_factor=c.reduction_factor)
    return optuna.pruners.NopPruner()
