"""LambdaMART with LightGBM (``scorer=lightgbm``): the gradient-boosted tree baseline.

Same command line, data, metrics and MLflow experiment as the neural scorers, so the MLflow UI
shows both side by side under the same metric names:

- data: the ``dataset`` option is prepared as for a neural run (``PreparedData``: ELWC shards and
  their ``FeatureSpec``; LETOR text, ELWC and synthetic alike) and read back into dense arrays,
  one column per feature value (context features repeated for each document of their list),
  documents with a label < 0 (padding) left out;
- training: ``lightgbm.train`` with ``objective=lambdarank`` and the ``scorer.*`` parameters,
  early stopping on vali with LightGBM's ``ndcg@k`` for ``metrics.monitor=ndcg_k``;
- evaluation: the best iteration's scores on vali and test go through *our* metrics
  (ranking_exp/metrics.py, ``metrics.convention``), giving ``best_val_*`` and ``test_*``;
  ``best_val_<monitor>`` is the objective returned to Hydra/Optuna;
- record (ranking_exp/tracking): params, metrics (and LightGBM's own vali metric per iteration
  as ``lightgbm_val_ndcg_<k>``), the model as an MLflow LightGBM model (a pyfunc; the booster
  text file and ``feature_spec.json`` inside), the Hydra config; ``export/lightgbm/`` and
  ``results.json`` in the run directory.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ranking_exp.config import LightGBMScorerConfig, RunConfig
from ranking_exp.data.prepared import PreparedData
from ranking_exp.data.spec import FeatureSpec
from ranking_exp.errors import DataError, TrainingDiverged

log = logging.getLogger(__name__)
MODEL_FILE = "model.txt"
# Config sections that do not apply to a LightGBM run (left out of its MLflow params).
_NOT_APPLICABLE = ("loss", "optimizer", "preprocess", "callbacks", "model", "export", "strategy", "ensemble")
_TRAIN_KEYS = ("threads", "deterministic", "splits")


@dataclasses.dataclass
class Split:
    """One split as LightGBM takes it: rows grouped by query, in file order."""

    x: np.ndarray  # [documents, columns] float32
    y: np.ndarray  # [documents] labels
    groups: np.ndarray  # [queries] documents per query

    def per_query(self, values: np.ndarray) -> list[np.ndarray]:
        return np.split(values, np.cumsum(self.groups)[:-1])


def feature_columns(spec: FeatureSpec) -> list[str]:
    """Column names: context then example features; a feature of shape [k] gives k columns."""
    cols = []
    for f in spec.context + spec.example:
        cols += [f.name] if f.size == 1 else [f"{f.name}_{i}" for i in range(f.size)]
    return cols


def load_split(data: PreparedData, split: str) -> Split | None:
    """The split's documents as dense arrays (None if the data set has no such split)."""
    from ranking_exp.data.elwc import read_elwc

    info = data.split(split)
    if info is None or not info.files:
        return None
    spec = data.spec
    xs, ys, groups = [], [], []
    for context, examples, labels in read_elwc(info.files, spec, batch_size=256):
        keep = labels >= 0
        n = int(keep.sum())
        if n == 0:
            continue
        cols = [np.broadcast_to(np.asarray(context[f.name], np.float32).reshape(1, f.size), (len(labels), f.size))
                for f in spec.context]
        cols += [np.asarray(examples[f.name], np.float32).reshape(len(labels), f.size) for f in spec.example]
        xs.append(np.concatenate(cols, axis=1)[keep])
        ys.append(labels[keep])
        groups.append(n)
    if not groups:
        raise DataError(f"{data.root}: the {split} split has no document with a label >= 0")
    y = np.concatenate(ys).astype(np.float64)
    if not np.array_equal(y, np.round(y)):
        bad = y[y != np.round(y)][0]
        raise DataError(f"{data.root}: {split} label {bad:g}: LightGBM's lambdarank needs whole-number labels")
    return Split(x=np.concatenate(xs), y=y.astype(np.int32), groups=np.asarray(groups, np.int64))


def lightgbm_params(run: RunConfig) -> dict[str, Any]:
    """``lightgbm.train`` parameters from ``scorer.*``, ``metrics.monitor``, ``seed`` and ``train``."""
    s: LightGBMScorerConfig = run.scorer
    params: dict[str, Any] = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [int(run.metrics.monitor[len("ndcg_"):])],
        **{k: getattr(s, k) for k in ("learning_rate", "num_leaves", "max_depth", "min_child_samples",
                                      "min_child_weight", "subsample", "subsample_freq", "colsample_bytree",
                                      "reg_alpha", "reg_lambda", "min_split_gain", "max_bin")},
        "seed": run.seed,
        "num_threads": run.train.threads or 0,
        "verbosity": -1,
        **s.params,
    }
    if run.train.deterministic:
        params.setdefault("deterministic", True)
        params.setdefault("force_col_wise", True)
    return params


def _check_labels(split: Split, name: str, params: dict[str, Any], root: Path) -> None:
    gains = params.get("label_gain")
    limit = len(gains) if gains is not None else 31  # LightGBM's default label_gain: 2^i - 1, i < 31
    if split.y.max() >= limit:
        raise DataError(f"{root}: {name} label {split.y.max()} is beyond LightGBM's label_gain "
                        f"({limit} grades); set scorer.params.label_gain")


def _loggable_config(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_APPLICABLE:
        data.pop(key, None)
    if isinstance(data.get("train"), dict):
        data["train"] = {k: v for k, v in data["train"].items() if k in _TRAIN_KEYS}
    return data


def run_lightgbm(run: RunConfig, cfg: DictConfig, *, launch_dir: str, run_name: str | None = None,
                 tags: dict[str, str] | None = None, hydra_dir: str | None = None):
    """One LightGBM run, recorded like a neural one; returns ``experiment.RunResult``."""
    from ranking_exp.data.sources import prepare
    from ranking_exp.tracking import Tracker

    if run.callbacks.extra:
        log.warning("callbacks.extra (e.g. a sweep's pruning callback) is for Keras and ignored by scorer=lightgbm")
    data = prepare(run.dataset)  # data errors surface here, before any MLflow run exists
    splits = {name: load_split(data, name) for name in ("train", "vali", "test")}
    for name in ("train", "vali"):
        if splits[name] is None:
            raise DataError(f"{data.root}: the data set has no {name} split")
    params = lightgbm_params(run)
    for name, split in splits.items():
        if split is not None:
            _check_labels(split, name, params, data.root)

    tracker = Tracker(run.tracking.uri, run.tracking.experiment, launch_dir)
    tags = {**run.tracking.tags, **(tags or {}), "output_dir": run.output_dir, "data": str(data.root)}
    with tracker.start_run(run.tracking.run_name or run_name, tags, parent_run_id=run.tracking.parent_run_id):
        tracker.log_params(_loggable_config(cfg))
        if hydra_dir:
            tracker.log_artifacts(hydra_dir, "hydra")
        return _train_and_record(run, data, splits, params, tracker)


def _train_and_record(run: RunConfig, data: PreparedData, splits: dict[str, Split | None],
                      params: dict[str, Any], tracker):
    import lightgbm as lgb
    import tensorflow as tf

    from ranking_exp.experiment import RunResult, _write_results
    from ranking_exp.metrics import evaluate_lists

    s: LightGBMScorerConfig = run.scorer
    columns = feature_columns(data.spec)
    train, vali = splits["train"], splits["vali"]
    started = time.time()
    train_set = lgb.Dataset(train.x, label=train.y, group=train.groups, feature_name=columns,
                            free_raw_data=True)
    vali_set = lgb.Dataset(vali.x, label=vali.y, group=vali.groups, reference=train_set)
    history: dict[str, dict[str, list[float]]] = {}
    callbacks = [lgb.record_evaluation(history)]
    if s.early_stopping_rounds:
        callbacks.append(lgb.early_stopping(s.early_stopping_rounds, first_metric_only=True,
                                            verbose=run.train.verbose > 0))
    if run.train.verbose > 0:
        callbacks.append(lgb.log_evaluation(period=50))
    booster = lgb.train(params, train_set, num_boost_round=s.num_boost_round, valid_sets=[vali_set],
                        valid_names=["vali"], callbacks=callbacks)
    best_iteration = booster.best_iteration or booster.current_iteration()
    if run.train.refit:  # train.splits=[train, vali]: as many trees as early stopping chose, on both
        log.info("LightGBM: refitting %d trees (early stopping's choice on vali) on train + vali", best_iteration)
        both = lgb.Dataset(np.concatenate([train.x, vali.x]), label=np.concatenate([train.y, vali.y]),
                           group=np.concatenate([train.groups, vali.groups]), feature_name=columns, free_raw_data=True)
        booster = lgb.train(params, both, num_boost_round=best_iteration)
    train_seconds = time.time() - started

    tf.keras.utils.set_random_seed(run.seed)  # the standard metrics break ties at random: repeatably
    metrics: dict[str, float] = {}
    for split_name, prefix in (("vali", "best_val_"), ("test", "test_")):
        split = splits[split_name]
        if split is None:
            continue
        scores = booster.predict(split.x, num_iteration=best_iteration)
        labels = [q.astype(np.float32) for q in split.per_query(split.y)]
        values = evaluate_lists(labels, split.per_query(scores.astype(np.float32)), run.metrics)
        metrics.update({prefix + k: v for k, v in values.items()})
    objective = metrics.get(f"best_val_{run.metrics.monitor}", float("nan"))
    if not math.isfinite(objective):
        raise TrainingDiverged(f"training diverged: validation {run.metrics.monitor} is {objective} "
                               f"(try a lower scorer.learning_rate than {s.learning_rate})")
    metrics.update(train_seconds=train_seconds, best_iteration=float(best_iteration))
    tracker.log_metrics(metrics)
    for metric, values in history.get("vali", {}).items():
        tracker.log_metric_history("lightgbm_val_" + metric.replace("@", "_"), values)

    export_dir = Path(run.output_dir) / "export" / "lightgbm"
    export_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(export_dir / MODEL_FILE), num_iteration=best_iteration)
    spec_path = data.spec.save(export_dir)
    model_uri = None
    if run.tracking.log_model:
        model_uri = tracker.log_lightgbm(booster, columns, extra_files=[str(spec_path)])
    result = RunResult(run_id=tracker.run_id, output_dir=run.output_dir, objective=objective, metrics=metrics,
                       exports={"best": str(export_dir)}, model_uri=model_uri)
    _write_results(result, run, str(export_dir))
    log.info("LightGBM: %d trees (best iteration %d of %d), %.1f s", booster.num_trees(), best_iteration,
             booster.current_iteration(), train_seconds)
    return result


__all__ = ["MODEL_FILE", "Split", "feature_columns", "lightgbm_params", "load_split", "run_lightgbm"]
