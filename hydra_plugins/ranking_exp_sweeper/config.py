"""The sweeper's structured config: field names as hydra-optuna-sweeper users know them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from ranking_exp.errors import ConfigError

SAMPLERS = ("tpe", "random", "qmc", "cmaes", "grid", "nsgaii")
PRUNERS = ("median", "percentile", "patient", "hyperband", "successive_halving", "none")


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"hydra.sweeper.{key}: {problem}")


@dataclass
class SamplerConfig:
    kind: str = "tpe"
    seed: Optional[int] = None
    n_startup_trials: int = 10  # tpe: random trials before modelling
    multivariate: bool = False  # tpe
    population_size: int = 50  # nsgaii

    def __post_init__(self):
        _check(self.kind in SAMPLERS, "sampler.kind", f"{self.kind!r} is not a sampler (choose from {', '.join(SAMPLERS)})")


@dataclass
class PrunerConfig:
    kind: str = "median"
    n_startup_trials: int = 2  # median / percentile / patient: trials that finish before any pruning
    n_warmup_steps: int = 1  # median / percentile / patient: epochs before a trial can be pruned
    interval_steps: int = 1  # median / percentile / patient: epochs between pruning checks
    percentile: float = 50.0  # percentile / patient: keep trials in the top `percentile`% at each epoch (50: median)
    patience: int = 1  # patient: prune only after this many epochs without a better validation value...
    min_delta: float = 0.0  # patient: ...by more than min_delta (then the median/percentile rule decides)
    min_resource: int = 1  # hyperband / successive_halving (epochs)
    max_resource: Any = "auto"
    reduction_factor: int = 3

    def __post_init__(self):
        _check(self.kind in PRUNERS, "pruner.kind", f"{self.kind!r} is not a pruner (choose from {', '.join(PRUNERS)})")
        for key in ("n_startup_trials", "n_warmup_steps", "patience"):
            _check(_is_int(getattr(self, key)) and getattr(self, key) >= 0, f"pruner.{key}",
                   f"must be an integer >= 0, got {getattr(self, key)!r}")
        for key in ("interval_steps", "min_resource"):
            _check(_is_int(getattr(self, key)) and getattr(self, key) >= 1, f"pruner.{key}",
                   f"must be an integer >= 1, got {getattr(self, key)!r}")
        _check(_is_int(self.reduction_factor) and self.reduction_factor >= 2, "pruner.reduction_factor",
               f"must be an integer >= 2, got {self.reduction_factor!r}")
        _check(self.max_resource == "auto" or (_is_int(self.max_resource) and self.max_resource >= self.min_resource),
               "pruner.max_resource", f"must be 'auto' or an integer >= min_resource, got {self.max_resource!r}")
        _check(is_number(self.percentile) and 0.0 < self.percentile <= 100.0, "pruner.percentile",
               f"must be in (0, 100] (the share of trials kept at each epoch), got {self.percentile!r}")
        _check(is_number(self.min_delta) and self.min_delta >= 0.0, "pruner.min_delta",
               f"must be >= 0, got {self.min_delta!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float, not a bool (YAML's true is not 1 here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class RankingOptunaSweeperConf:
    _target_: str = "hydra_plugins.ranking_exp_sweeper.sweeper.RankingOptunaSweeper"
    # What to optimize: names of values the training job returns (``objective`` is the best
    # validation value of metrics.monitor; also best_val_<metric>, test_<metric>, ...).
    objective: Any = "objective"
    direction: Any = "maximize"
    study_name: Optional[str] = None  # default: the sweep's name, else "ranking_exp"
    storage: Optional[str] = "sqlite:///optuna.db"
    n_trials: int = 20
    n_jobs: int = 1  # trials launched together (parallel with a parallel launcher, e.g. joblib)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    params: dict[str, str] = field(default_factory=dict)
    # Trials to run first, each fixing some swept keys (Optuna's study.enqueue_trial), e.g. the
    # configuration in use: [{optimizer.learning_rate: 0.006, scorer.dropout: 0.13}]
    enqueue_trials: list[Any] = field(default_factory=list)
    max_failure_rate: float = 0.5  # stop the sweep when more trials than this fraction fail
    heartbeat_interval: int = 30  # seconds; trials silent for grace_period are failed and retried
    grace_period: int = 120
    max_retry: int = 2  # retries of a configuration whose process died
    register_model: bool = True  # register the best trial's model under study_name
    model_alias: str = "champion"

    def __post_init__(self):
        _check(self.n_trials > 0, "n_trials", "must be > 0")
        _check(self.n_jobs > 0, "n_jobs", "must be > 0")
        _check(0.0 <= self.max_failure_rate <= 1.0, "max_failure_rate", "must be in [0, 1]")
        objectives = [self.objective] if isinstance(self.objective, str) else list(self.objective)
        directions = [self.direction] if isinstance(self.direction, str) else list(self.direction)
        _check(all(d in ("maximize", "minimize") for d in directions), "direction",
               f"{directions} must be maximize or minimize")
        _check(len(objectives) == len(directions), "direction",
               f"{len(directions)} direction(s) for {len(objectives)} objective(s)")


def register() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="ranking_optuna", node=RankingOptunaSweeperConf,
                                 provider="ranking_exp")
