"""Optuna objects from the sweeper's config: samplers, pruners, and the prune signal."""
from __future__ import annotations

import warnings

import numpy as np
import optuna

from hydra_plugins.ranking_exp_sweeper.config import PrunerConfig, SamplerConfig
from ranking_exp.errors import ConfigError, RunStopped


class TrialPruned(optuna.TrialPruned, RunStopped):
    """Optuna's prune signal that ranking_exp's tracker also understands (MLflow tag state=PRUNED)."""

    state = "PRUNED"


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed 32-bit seed for one trial of a study sampled with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A seeded sampler whose random state comes from each trial's number, not from the process.

    A seeded Optuna sampler draws from one random stream that starts over in every process: a sweep
    resumed in a new process, or a second worker on the same study, would propose the points already
    tried (a resumed sweep re-ran its first random trials, stop 19). Rebuilt for each trial with the seed
    (``seed``, trial number), the sampler proposes what that trial number gets in any process: the
    same sweep is still repeatable, and no two trials share a random draw. Everything else the sampler
    knows lives in the study's storage (TPE's history, CMA-ES's and NSGA-II's state), which it reads
    afresh each time either way.
    """

    def __init__(self, build, seed: int):
        self._build, self._seed = build, seed
        self._inner = build(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._build(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(c: SamplerConfig, distributions) -> optuna.samplers.BaseSampler:
    builders = {
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=c.n_startup_trials,
                                                       multivariate=c.multivariate),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
        "nsgaii": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=c.population_size),
    }
    if c.kind in builders:
        # QMC and grid are left as they are: their seed fixes the sequence or the order (scramble,
        # shuffle), and which point comes next is read from the study, so they resume where they stopped.
        build = builders[c.kind]
        return build(None) if c.seed is None else PerTrialSeed(build, c.seed)
    if c.kind == "qmc":  # scrambled Sobol points; proposals never depend on results (categoricals drawn at random)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=c.seed,
                                              warn_independent_sampling=False)
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
