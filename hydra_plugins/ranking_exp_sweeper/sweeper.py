"""A Hydra Sweeper on Optuna's ask/tell API, with pruning, resume, heartbeats and MLflow.

Each trial is one ordinary ranking_exp job launched by Hydra's launcher with the sampled
overrides, a pruning callback (as a ``callbacks.extra`` config node) and the MLflow parent
run id. Any number of processes running the same command against one storage share the
study and together run ``n_trials`` trials.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

import dataclasses

from hydra_plugins.ranking_exp_sweeper.config import RankingOptunaSweeperConf
from hydra_plugins.ranking_exp_sweeper.factories import TrialPruned, make_pruner, make_sampler
from hydra_plugins.ranking_exp_sweeper.space import check_paths, enqueued_params, override_value, parse_params
from ranking_exp.config import GROUPS
from ranking_exp.errors import ConfigError, UserError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna warns that heartbeats, stale-trial handling and QMC are experimental, and that heartbeats are
    meant for Study.optimize (we record them ourselves around ask/tell trials, see _Heartbeat): known and
    intended here, so not shown to the user. Scoped, since TensorFlow and MLflow reset global filters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield

TrialState = optuna.trial.TrialState
PARENT_RUN_ATTR = "mlflow_parent_run_id"


class SweepFailed(UserError):
    """Too many trials failed."""


def resolve_storage_url(url: str) -> str:
    """A relative sqlite path is relative to the launch directory (as for MLflow)."""
    from ranking_exp.tracking import resolve_uri

    return resolve_uri(url, Path.cwd()) if url.startswith("sqlite:///") else url


def load_config(kwargs: dict[str, Any]) -> RankingOptunaSweeperConf:
    # Plain containers first: Hydra's plugin scan may have loaded the schema classes twice.
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in kwargs.items()}
    node = OmegaConf.merge(OmegaConf.structured(RankingOptunaSweeperConf), plain)
    return OmegaConf.to_object(node)


def split_arguments(arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """Plain overrides go to every trial; swept ones (a,b / choice / interval) join the space."""
    fixed, swept = [], {}
    for o in OverridesParser.create().parse_overrides(list(arguments)):
        if o.is_sweep_override():
            swept[o.get_key_element()] = o.get_value_string()
        else:
            fixed.append(o.input_line)
    return fixed, swept


class _Heartbeat:
    """Records heartbeats for running trials, so a killed process's trials are detected."""

    def __init__(self, storage, trial_ids: list[int], interval: int):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            for tid in self.trial_ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # a finished trial, or a storage hiccup: try again next beat
                    pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


class RankingOptunaSweeper(Sweeper):
    @staticmethod
    def preflight(sweeper_cfg: DictConfig, job_cfg: DictConfig, overrides: list[str]) -> list[tuple[str, list[str]]]:
        """Checks the sweep before Hydra starts (called by ranking_exp's CLI): one-line errors.

        Returns ``(where, overrides)`` for each enqueued trial that fixes every swept key: a whole
        trial known before any runs, which the CLI composes and validates like a single run (a value
        valid alone can be invalid beside another: a lambda weight on a loss that takes none)."""
        kwargs = {k: v for k, v in sweeper_cfg.items() if k != "_target_"}
        try:
            conf = load_config(kwargs)
        except ConfigError:
            raise
        except Exception as e:
            from ranking_exp.config import one_line_omegaconf_error

            raise ConfigError(f"hydra.sweeper: {one_line_omegaconf_error(e)}") from None
        fixed, swept = split_arguments(overrides)
        params = {**conf.params, **swept}
        if not params:
            raise ConfigError("hydra.sweeper.params: empty search space")
        distributions = parse_params(params)
        check_paths(params, job_cfg, set(GROUPS))
        enqueued = enqueued_params(conf.enqueue_trials, distributions)
        splits = list(OmegaConf.select(job_cfg, "train.splits", default=["train"]) or [])
        if "vali" in splits or "train.splits" in params:
            raise ConfigError("train.splits: a sweep chooses on the validation set, so it must not train on it: sweep "
                              "with train.splits=[train], then refit the chosen trial with train.splits=[train,vali]")
        make_sampler(conf.sampler, distributions)
        return [(f"hydra.sweeper.enqueue_trials[{i}]", [*fixed, *(f"{k}={override_value(v)}" for k, v in trial.items())])
                for i, trial in enumerate(enqueued) if set(trial) == set(distributions)]

    def __init__(self, **kwargs: Any):
        self.conf = load_config(kwargs)
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.config: DictConfig | None = None
        self.job_idx = 0
        self._grid_done = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ----------------------------------------------------------------------------------
    def study_name(self) -> str:
        choices = self.config.hydra.runtime.choices
        return self.conf.study_name or choices.get("sweep") or "ranking_exp"

    def sweep(self, arguments: list[str]) -> None:
        conf = self.conf
        fixed, swept = split_arguments(arguments)
        params = {**conf.params, **swept}
        if not params:
            raise ConfigError("hydra.sweeper.params: empty search space")
        distributions = parse_params(params)
        check_paths(params, self.config, set(GROUPS))
        enqueued = enqueued_params(conf.enqueue_trials, distributions)
        objectives = [conf.objective] if isinstance(conf.objective, str) else list(conf.objective)
        directions = [conf.direction] if isinstance(conf.direction, str) else list(conf.direction)

        with _quiet_optuna():
            storage_url = resolve_storage_url(conf.storage) if conf.storage else None
            storage = None
            if storage_url:
                from ranking_exp.shared_db import open_shared

                # A trial whose heartbeat stopped (its process was killed) is marked FAIL and its configuration
                # enqueued again, up to max_retry times.
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=conf.max_retry)
                storage = open_shared(lambda: optuna.storages.RDBStorage(
                    storage_url, heartbeat_interval=conf.heartbeat_interval, grace_period=conf.grace_period,
                    heartbeat_stale_trial_callback=retry), f"Optuna storage {storage_url}", url=storage_url)
            name = self.study_name()
            study = optuna.create_study(
                study_name=name, storage=storage, sampler=make_sampler(conf.sampler, distributions),
                pruner=make_pruner(conf.pruner), directions=directions, load_if_exists=True)
            # Once per study: skipped when a trial with these params exists (a resumed sweep, other workers).
            for fixed_params in enqueued:
                study.enqueue_trial(fixed_params, skip_if_exists=True)
            # A resumed sweep numbers its jobs on from the study's trials, so a fixed hydra.sweep.dir keeps
            # the earlier jobs' outputs (job N is trial N while one worker runs the study).
            self.job_idx = max(self.job_idx, sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)))
        monitor = f"val_{self.config.metrics.monitor}"
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)

        from ranking_exp.tracking import SweepRecorder

        # Workers sharing the study share one parent run: its id lives in the study.
        recorder = SweepRecorder(self.config.tracking.uri, self.config.tracking.experiment, Path.cwd(), name,
                                 parent_run_id=study.user_attrs.get(PARENT_RUN_ATTR))
        self._adopt_parent(study, recorder)
        log.info("Study %s (%s): %d trials, sampler %s, pruner %s; MLflow parent run %s",
                 name, storage_url or "in memory", conf.n_trials, conf.sampler.kind, conf.pruner.kind,
                 recorder.parent_run_id)
        try:
            self._run_trials(study, storage, storage_url, distributions, fixed, objectives, monitor, recorder)
        finally:
            self._finish(study, objectives, sweep_dir, recorder)

    @staticmethod
    def _adopt_parent(study, recorder) -> None:
        parent = recorder.adopt()
        if study.user_attrs.get(PARENT_RUN_ATTR) != parent:
            study.set_user_attr(PARENT_RUN_ATTR, parent)

    def _counts(self, study) -> dict[TrialState, int]:
        counts = {s: 0 for s in TrialState}
        for t in study.get_trials(deepcopy=False):
            counts[t.state] += 1
        return counts

    def _run_trials(self, study, storage, storage_url, distributions, fixed, objectives, monitor, recorder):
        conf = self.conf
        while True:
            if storage is not None:
                with _quiet_optuna():
                    optuna.storages.fail_stale_trials(study)
            counts = self._counts(study)
            done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            failed = counts[TrialState.FAIL]
            if failed and failed > conf.max_failure_rate * max(done + failed, 1) and failed >= 2:
                raise SweepFailed(f"{failed} of {done + failed} trials failed (hydra.sweeper.max_failure_rate="
                                  f"{conf.max_failure_rate}); see the job logs in {self.config.hydra.sweep.dir}")
            budget = conf.n_trials - done - counts[TrialState.RUNNING]
            if budget <= 0:
                return
            self._adopt_parent(study, recorder)  # workers that started together agree on one parent
            with _quiet_optuna():
                asked = [study.ask(distributions) for _ in range(min(conf.n_jobs, budget))]
            trials = [t for t in asked if not self._surplus(study, t)]
            if not trials:
                return
            batch = []
            for trial in trials:
                overrides = [*fixed, *(f"{k}={override_value(v)}" for k, v in trial.params.items())]
                overrides.append(f"tracking.parent_run_id={recorder.parent_run_id}")
                overrides.append(f"+tracking.tags.optuna_trial={trial.number}")
                overrides.append(f"+tracking.tags.optuna_study={study.study_name}")
                if storage_url and conf.pruner.kind != "none" and len(objectives) == 1:
                    overrides.append(
                        "callbacks.extra=[{_target_:hydra_plugins.ranking_exp_sweeper.pruning.OptunaPruningCallback,"
                        f"storage:'{storage_url}',study_name:'{study.study_name}',trial_id:{trial._trial_id},"
                        f"monitor:{monitor},pruner:{inline(dataclasses.asdict(conf.pruner))}}}]")
                batch.append(overrides)
            with _Heartbeat(storage, [t._trial_id for t in trials], conf.heartbeat_interval) if storage else _nullctx():
                returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(batch)
            for trial, ret in zip(trials, returns):
                self._tell(study, trial, ret, objectives)
            if self._grid_done:
                log.info("every grid point has been tried")
                return

    def _surplus(self, study, trial) -> bool:
        """Another worker may have asked for the last trials at the same moment: never run more
        than n_trials; a surplus trial ends FAIL (user attr ``surplus``) without running."""
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ahead = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        if len(ahead) < self.conf.n_trials:
            return False
        trial.set_user_attr("surplus", "n_trials reached by other workers")
        study.tell(trial, state=TrialState.FAIL)
        return True

    def _tell(self, study, trial, *args) -> None:
        try:
            self._tell_result(study, trial, *args)
        except RuntimeError as e:
            # GridSampler calls study.stop() once the grid is exhausted, which only works inside
            # study.optimize; the trial's state is stored before that (optuna's tell uses finally).
            if "Study.stop" not in str(e):
                raise
            self._grid_done = True

    def _tell_result(self, study, trial, ret, objectives) -> None:
        if ret.status == JobStatus.FAILED:
            error = ret._return_value
            if isinstance(error, TrialPruned):
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d pruned", trial.number)
            else:
                trial.set_user_attr("error", str(error).splitlines()[0] if str(error) else type(error).__name__)
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed: %s", trial.number, error)
            return
        result = ret.return_value or {}
        for key in ("mlflow_run_id", "model_uri"):
            if result.get(key):
                trial.set_user_attr(key, result[key])
        values = [result.get(name) for name in objectives]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            trial.set_user_attr("error", f"objective values {dict(zip(objectives, values))} are missing or not finite")
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, trial.user_attrs["error"])
            return
        study.tell(trial, [float(v) for v in values])

    # ----------------------------------------------------------------------------------
    def _finish(self, study, objectives, sweep_dir: Path, recorder) -> None:
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        counts = self._counts(study)
        summary: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
                                   "n_failed": counts[TrialState.FAIL]}
        if not complete:
            (sweep_dir / "optimization_results.yaml").write_text(OmegaConf.to_yaml(summary))
            recorder.finish(summary, None)
            return
        if len(objectives) == 1:
            best = study.best_trial
            summary.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number)
            best_trials = [best]
        else:
            best_trials = study.best_trials
            summary["solutions"] = [{"params": dict(t.params), "values": list(t.values), "trial": t.number}
                                    for t in best_trials]
        (sweep_dir / "optimization_results.yaml").write_text(OmegaConf.to_yaml(json.loads(json.dumps(summary))))
        print(best_table(study, objectives))
        recorder.finish(summary, best_trials[0].user_attrs.get("mlflow_run_id"), plots(study, sweep_dir),
                        model_uri=best_trials[0].user_attrs.get("model_uri"),
                        register_as=study.study_name if self.conf.register_model else None,
                        alias=self.conf.model_alias)


def plots(study, sweep_dir: Path) -> list[Path]:
    """Optimization history and parameter importances as PNG files (what the study allows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = []
    for name, draw in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = draw(study) if len(study.directions) == 1 else draw(study, target=lambda t: t.values[0])
            path = sweep_dir / f"{name}.png"
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            out.append(path)
        except Exception as e:  # e.g. importances need two completed trials with varied params
            log.info("no %s plot: %s", name, e)
    return out


def inline(d: dict) -> str:
    """A flat dict as Hydra override text: {a:1,b:'x',c:null}."""
    def text(v):
        if v is None:
            return "null"
        if isinstance(v, str):
            return f"'{v}'"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return "{" + ",".join(f"{k}:{text(v)}" for k, v in d.items()) + "}"


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def best_table(study, objectives: list[str], top: int = 5) -> str:
    """The best trials as a text table."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    complete.sort(key=lambda t: sign * t.values[0])
    keys = sorted({k for t in complete for k in t.params})
    header = ["trial", *objectives, *keys]
    rows = [[str(t.number), *(f"{v:.4f}" for v in t.values), *(str(t.params.get(k, "")) for k in keys)]
            for t in complete[:top]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return f"Best trials of study {study.study_name}:\n" + "\n".join(lines)
