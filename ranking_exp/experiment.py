"""One run, start to end: data -> model -> train -> export -> evaluate -> record.

Data flows one way through the rooms: ``data`` prepares ELWC shards and the FeatureSpec,
``model`` builds the Keras ranker from the spec, ``train`` runs TF Ranking's pipeline and
exports, ``tracking`` records it all in MLflow. The returned objective (the best validation
value of ``metrics.monitor``) is what Hydra sweepers optimize.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ranking_exp.config import CustomScorerConfig, LightGBMScorerConfig, RunConfig
from ranking_exp.data.sources import prepare
from ranking_exp.errors import RunStopped, TrainingDiverged
from ranking_exp.plugins import load_callable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    run_id: str
    output_dir: str
    objective: float
    metrics: dict[str, float]
    exports: dict[str, str]
    model_uri: str | None


def check_plugins(run: RunConfig) -> None:
    """Imports every user-code path named in the config, before any data work."""
    if isinstance(run.scorer, CustomScorerConfig):
        load_callable(run.scorer.target, "scorer.target")
    if run.preprocess.custom:
        load_callable(run.preprocess.custom, "preprocess.custom")
    if run.model.builder:
        load_callable(run.model.builder, "model.builder")


def limit_threads(threads: int | None) -> None:
    """Caps TensorFlow's CPU threads; must run before TensorFlow executes its first op."""
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialized by an earlier job in this worker process
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            log.warning("train.threads=%s ignored: TensorFlow already runs with %s threads in this process",
                        threads, tf.config.threading.get_intra_op_parallelism_threads())


def seed_everything(seed: int, deterministic: bool) -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def run_training(run: RunConfig, cfg: DictConfig, *, launch_dir: str, run_name: str | None = None,
                 tags: dict[str, str] | None = None, hydra_dir: str | None = None) -> RunResult:
    if isinstance(run.scorer, LightGBMScorerConfig):  # gradient-boosted trees: no Keras model (gbdt.py)
        from ranking_exp.gbdt import run_lightgbm

        return run_lightgbm(run, cfg, launch_dir=launch_dir, run_name=run_name, tags=tags, hydra_dir=hydra_dir)
    if run.ensemble.enabled:  # a member run per seed, one mean-score model (ensemble.py)
        from ranking_exp.ensemble import run_ensemble

        return run_ensemble(run, cfg, launch_dir=launch_dir, run_name=run_name, tags=tags, hydra_dir=hydra_dir)
    check_plugins(run)
    limit_threads(run.train.threads)
    strategy = _make_strategy(run)  # before TensorFlow's first op (multi-worker strategies need that)
    data = prepare(run.dataset).training_on(run.train.splits)  # user data errors surface here, before any MLflow run

    from ranking_exp.train.resume import ResumeDir

    resume = ResumeDir.for_run(run, cfg, launch_dir)
    if not run.strategy.is_chief():  # the chief alone records the run (and exports it)
        from ranking_exp.tracking import NullTracker

        state = resume.state() if resume is not None and resume.has_backup() else {}
        return _train_and_record(run, data, NullTracker(), strategy, resume, state.get("best"), chief=False)

    from ranking_exp.tracking import Tracker

    tracker = Tracker(run.tracking.uri, run.tracking.experiment, launch_dir)
    tags = {**run.tracking.tags, **(tags or {}), "output_dir": run.output_dir, "data": str(data.root)}
    resume_run_id, initial_best = None, None
    if resume is not None:
        state = resume.state()
        earlier = state.get("run_id")
        if resume.has_backup():
            initial_best = state.get("best")
            if earlier and tracker.run_status(earlier) is not None:
                resume_run_id = earlier
                log.info("resuming MLflow run %s from the backup in %s", earlier, resume.root)
            else:
                log.info("resuming training from the backup in %s", resume.root)
        else:
            if earlier:  # killed before its first backup: nothing to continue, but don't leave it RUNNING
                tracker.mark_failed(earlier, "INTERRUPTED")
            resume.clear_stale()
            resume.update(best=None, run_id=None)
    with tracker.start_run(run.tracking.run_name or run_name, tags, parent_run_id=run.tracking.parent_run_id,
                           resume_run_id=resume_run_id):
        if resume_run_id is None:
            tracker.log_params(OmegaConf.to_container(cfg, resolve=True))
        if resume is not None:
            attempt = int(resume.state().get("attempt", 0)) + 1
            resume.update(run_id=tracker.run_id, output_dir=run.output_dir, attempt=attempt)
            tracker.set_tags({"attempt": attempt, "backup_dir": str(resume.root)})
        if hydra_dir:
            tracker.log_artifacts(hydra_dir, "hydra")  # composed config, overrides, hydra.yaml
        try:
            result = _train_and_record(run, data, tracker, strategy, resume, initial_best)
        except RunStopped:
            if resume is not None:  # ended on purpose (e.g. pruned): nothing to resume
                resume.remove()
            raise
        if resume is not None:
            resume.remove()
        return result


def _make_strategy(run: RunConfig):
    if run.strategy.kind == "none":
        return None
    from ranking_exp.train.strategy import make_strategy

    return make_strategy(run.strategy)


def _train_and_record(run: RunConfig, data, tracker, strategy, resume, initial_best, chief: bool = True) -> RunResult:
    import tensorflow as tf

    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.model.builder import build_model_builder
    from ranking_exp.train.pipeline import RankingPipeline
    from ranking_exp.train.strategy import num_workers

    if strategy is None:
        tf.keras.backend.clear_session()  # jobs of a multirun share the process: start each from scratch
    seed_everything(run.seed, run.train.deterministic)
    started = time.time()
    datasets = RankingDatasetBuilder(data, run.train, run.seed, num_workers=num_workers(strategy),
                                     shard_policy=run.strategy.shard_policy)
    model_builder = build_model_builder(run, data.spec, lambda: datasets.build_split_dataset("train"))
    pipeline = RankingPipeline(model_builder, datasets, run, extra_callbacks=[tracker.keras_callback()],
                               strategy=strategy, is_chief=chief, resume=resume, initial_best=initial_best)
    pipeline.train_and_validate(verbose=run.train.verbose)
    train_seconds = time.time() - started
    first = pipeline.epochs_run.first_epoch
    if first:
        log.info("resumed from the backup at epoch %d: trained epochs %d..%d", first + 1, first + 1,
                 first + pipeline.epochs_run.count)
        tracker.set_tags({"resumed_at_epoch": first})

    metrics: dict[str, float] = {}
    for split, prefix in (("vali", "best_val_"), ("test", "test_")):
        dataset = datasets.build_split_dataset(split)
        if dataset is not None:
            metrics.update({prefix + k: v for k, v in pipeline.evaluate(dataset).items()})
    objective = metrics.get(f"best_val_{run.metrics.monitor}", float("nan"))
    if not math.isfinite(objective):
        raise TrainingDiverged(f"training diverged: validation {run.metrics.monitor} is {objective} "
                               f"(try a lower optimizer.learning_rate than {run.optimizer.learning_rate})")
    metrics["train_seconds"] = train_seconds
    if not chief:  # a non-chief worker: the chief exports, records and writes results.json
        return RunResult(run_id="", output_dir=run.output_dir, objective=objective, metrics=metrics,
                         exports={}, model_uri=None)
    tracker.log_metrics(metrics)

    model_uri = None
    model_dir = pipeline.exports.get("best") or pipeline.exports["last"]
    if run.tracking.log_model:
        model_uri = tracker.log_ranker(model_dir, data.spec.to_dict())
    tracker.log_artifacts(os.path.join(run.output_dir, "tensorboard"), "tensorboard")
    result = RunResult(run_id=tracker.run_id, output_dir=run.output_dir, objective=objective, metrics=metrics,
                       exports=dict(pipeline.exports), model_uri=model_uri)
    _write_results(result, run, model_dir)
    return result


def _write_results(result: RunResult, run: RunConfig, model_dir: str) -> None:
    path = Path(run.output_dir) / "results.json"
    payload: dict[str, Any] = dataclasses.asdict(result)
    payload["model_dir"] = model_dir
    path.write_text(json.dumps(payload, indent=2) + "\n")


def summary_table(result: RunResult) -> str:
    """The final metrics as a small text table (validation of the best model and test)."""
    names = sorted({k.split("_", 2)[-1] if k.startswith("best_val_") else k[len("test_"):]
                    for k in result.metrics if k.startswith(("best_val_", "test_"))},
                   key=lambda n: (n[:4] != "ndcg", int(n[5:]) if n.startswith("ndcg_") else 0, n))
    rows = [f"{'metric':<10} {'vali':>8} {'test':>8}"]
    for n in names:
        v = result.metrics.get(f"best_val_{n}")
        t = result.metrics.get(f"test_{n}")
        rows.append(f"{n:<10} {'' if v is None else f'{v:8.4f}':>8} {'' if t is None else f'{t:8.4f}':>8}")
    return "\n".join(rows)
