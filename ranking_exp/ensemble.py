"""Ensembles of seeds (``ensemble.seeds``): one member run per seed, one model scoring their mean.

``ensemble.seeds=5`` (seeds ``seed`` .. ``seed + 4``) or ``ensemble.seeds=[1,7,42]`` trains one
ordinary run per seed (its own composed config: ``seed`` = the member's, ``ensemble.seeds`` = null,
output in ``<run dir>/seed_<seed>``), each recorded as an MLflow child run of one parent run (tag
``ranking_exp.role=ensemble``), as ranking_exp/cv.py does for folds. Then:

- **export**: ``<run dir>/export/ensemble``, one self-contained SavedModel (the members' variables
  copied in) with the same signatures as a member's export (``serving_default``,
  ``tensorflow/serving/regress``, ``tensorflow/serving/predict``, ``serving_features``), each the
  **plain mean of the members' raw scores** for the same signature, plus ``feature_spec.json`` and
  ``ensemble.json`` (the members). ``predict``, ``serve`` and the MLflow pyfunc take it unchanged.
  Why a plain mean: standardizing scores per list cannot be done for the per-document ``regress``
  signature (a list of one), and with a shift-invariant listwise loss (``softmax``, the default)
  each member's scores may carry its own offset, which a mean turns into one constant offset that
  changes no ranking; members whose score *scales* differ weigh in proportion to their scale.
- **evaluation**: the exported ensemble scores vali and test through the project's metrics
  (ranking_exp/metrics.py, ``metrics.convention``), giving ``best_val_*`` and ``test_*`` under the
  same names as a single run (so the MLflow UI sets them side by side);
- **record** (parent run): the composed config as params, those metrics, the members'
  ``members_<metric>_mean`` / ``_std`` (e.g. ``members_best_val_ndcg_10_mean``), ``train_seconds``
  (all members together), the ensemble as the run's model, ``results.json`` in the run dir.

The objective returned to Hydra/Optuna is the ensemble's ``best_val_<metrics.monitor>``. With
``dataset.folds`` every fold is an ensemble (CV parent > fold ensemble parent > member runs). A
killed ensemble command run again resumes the member it was training and trains the others again
under a new parent run, as cross-validation does.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ranking_exp.config import RunConfig, to_run_config
from ranking_exp.cv import ROLE_TAG, summarize
from ranking_exp.errors import TrainingDiverged
from ranking_exp.experiment import RunResult, _write_results

log = logging.getLogger(__name__)
EXPORT = "export/ensemble"
MANIFEST = "ensemble.json"
MEMBERS = "members_"  # prefix of the members' mean/std metrics on the parent run
FEATURES_SIGNATURE = "serving_features"


@dataclasses.dataclass
class EnsembleResult(RunResult):
    """A ``RunResult`` for the ensemble (its parent run, export, metrics), plus its members."""

    members: dict[int, RunResult] = dataclasses.field(default_factory=dict)  # seed -> member run
    member_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # members_<metric>_mean/_std


def member_config(cfg: DictConfig, run: RunConfig, seed: int, output_dir: str) -> DictConfig:
    """The composed config of one member's run."""
    member = copy.deepcopy(cfg)
    OmegaConf.set_readonly(member, False)
    with open_dict(member):
        member.seed = seed
        member.ensemble.seeds = None
        member.output_dir = output_dir
        member.tracking.run_name = None
        if not run.ensemble.log_member_models:
            member.tracking.log_model = False
        if run.train.backup_dir:  # one backup per member (the default is keyed by the config, seed included)
            member.train.backup_dir = str(Path(run.train.backup_dir) / f"seed_{seed}")
    return member


def run_ensemble(run: RunConfig, cfg: DictConfig, *, launch_dir: str, run_name: str | None = None,
                 tags: dict[str, str] | None = None, hydra_dir: str | None = None) -> EnsembleResult:
    from ranking_exp.data.sources import prepare
    from ranking_exp.experiment import check_plugins, limit_threads, run_training
    from ranking_exp.tracking import Tracker

    seeds = run.ensemble.member_seeds(run.seed)
    check_plugins(run)  # user code and data errors surface here, before any MLflow run exists
    limit_threads(run.train.threads)  # before TensorFlow's first op
    data = prepare(run.dataset).training_on(run.train.splits)
    name = run.tracking.run_name or run_name
    parent_name = run.tracking.run_name or (run_name and f"{run_name}-ensemble")
    tracker = Tracker(run.tracking.uri, run.tracking.experiment, launch_dir)
    parent_tags = {**run.tracking.tags, **(tags or {}), "output_dir": run.output_dir, ROLE_TAG: "ensemble",
                   "ensemble.seeds": ",".join(map(str, seeds)), "data": str(data.root)}
    members: dict[int, RunResult] = {}
    with tracker.start_run(parent_name, parent_tags, parent_run_id=run.tracking.parent_run_id):
        parent_id = tracker.run_id
        tracker.log_params(OmegaConf.to_container(cfg, resolve=True))
        if hydra_dir:
            tracker.log_artifacts(hydra_dir, "hydra")
        for i, seed in enumerate(seeds):
            log.info("ensemble: member seed=%d (%d of %d)", seed, i + 1, len(seeds))
            member_cfg = member_config(cfg, run, seed, str(Path(run.output_dir) / f"seed_{seed}"))
            member_run = to_run_config(member_cfg)
            # Nested under the parent, which is not in member_cfg: the member's resume backup is
            # keyed by its config, and the same command must find it again under a new parent run.
            member_run.tracking.parent_run_id = parent_id
            members[seed] = run_training(member_run, member_cfg, launch_dir=launch_dir,
                                         run_name=name and f"{name}-seed{seed}",
                                         tags={**(tags or {}), "ensemble.seed": str(seed),
                                               "ensemble.parent": str(parent_id)})
        return _export_evaluate_record(run, data, members, tracker)


def _export_evaluate_record(run: RunConfig, data, members: dict[int, RunResult], tracker) -> EnsembleResult:
    started = time.time()
    export_dir = Path(run.output_dir) / EXPORT
    manifest = {"combine": "mean", "members": [
        {"seed": seed, "run_id": r.run_id, "model_dir": member_model_dir(r), "objective": r.objective}
        for seed, r in members.items()]}
    export_ensemble([member_model_dir(r) for r in members.values()], export_dir, data.spec, manifest)
    metrics = evaluate_export(export_dir, data, run)
    objective = metrics.get(f"best_val_{run.metrics.monitor}", float("nan"))
    if not math.isfinite(objective):
        raise TrainingDiverged(f"the ensemble's validation {run.metrics.monitor} is {objective} "
                               f"(try a lower optimizer.learning_rate than {run.optimizer.learning_rate})")
    metrics["train_seconds"] = sum(r.metrics.get("train_seconds", 0.0) for r in members.values())
    member_metrics = {MEMBERS + k: v for k, v in summarize({s: r.metrics for s, r in members.items()}).items()}
    tracker.log_metrics({**metrics, **member_metrics, "ensemble_size": float(len(members)),
                         "ensemble_seconds": time.time() - started})
    model_uri = tracker.log_ranker(str(export_dir), data.spec.to_dict()) if run.tracking.log_model else None
    result = EnsembleResult(run_id=tracker.run_id, output_dir=run.output_dir, objective=objective, metrics=metrics,
                            exports={"ensemble": str(export_dir)}, model_uri=model_uri, members=members,
                            member_metrics=member_metrics)
    _write_results(result, run, str(export_dir))
    return result


def member_model_dir(result: RunResult) -> str:
    """The export a member contributes: the one its run logged (best by validation, else last)."""
    return result.exports.get("best") or result.exports["last"]


def export_ensemble(member_dirs: Sequence[str], export_dir: str | Path, spec,
                    manifest: dict[str, Any] | None = None) -> str:
    """Saves the mean-score ensemble of ``member_dirs`` (ranking_exp exports) to ``export_dir``,
    with the feature spec and ``ensemble.json`` (``manifest``: what it was made of) beside it."""
    from ranking_exp.model.ensemble import save_mean_ensemble

    export_dir = Path(export_dir)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    save_mean_ensemble([str(d) for d in member_dirs], str(export_dir))
    spec.save(export_dir)
    manifest = manifest or {"combine": "mean", "members": [{"model_dir": str(d)} for d in member_dirs]}
    (export_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return str(export_dir)


def evaluate_export(export_dir: str | Path, data, run: RunConfig) -> dict[str, float]:
    """``best_val_*`` and ``test_*`` of an export's ``serving_features`` scores on the data's vali
    and test lists, by the configured metrics (the same code and convention as training's)."""
    import tensorflow as tf

    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.metrics import build_metrics

    fn = tf.saved_model.load(str(export_dir)).signatures[FEATURES_SIGNATURE]
    names = list(fn.structured_input_signature[1])
    datasets = RankingDatasetBuilder(data, run.train, run.seed)
    tf.keras.utils.set_random_seed(run.seed)  # the standard metrics break ties at random: repeatably
    out: dict[str, float] = {}
    for split, prefix in (("vali", "best_val_"), ("test", "test_")):
        dataset = datasets.build_split_dataset(split)
        if dataset is None:
            continue
        metrics = build_metrics(run.metrics)
        for features, labels in dataset:
            scores = fn(**{k: features[k] for k in names})["outputs"]
            for m in metrics:
                m.update_state(labels, scores)
        out.update({prefix + m.name: float(m.result().numpy()) for m in metrics})
    return out


def summary_table(result: EnsembleResult) -> str:
    """The ensemble's vali and test metrics beside its members' mean +- std."""
    m, mm = result.metrics, result.member_metrics
    names = sorted({k[len("test_"):] for k in m if k.startswith("test_")}
                   | {k[len("best_val_"):] for k in m if k.startswith("best_val_")},
                   key=lambda n: (n[:4] != "ndcg", int(n[5:]) if n.startswith("ndcg_") else 0, n))

    def value(key: str) -> str:
        return f"{m[key]:.4f}" if key in m else ""

    def spread(key: str) -> str:
        key = MEMBERS + key
        return f"{mm[key + '_mean']:.4f} ± {mm[key + '_std']:.4f}" if key + "_mean" in mm else ""

    rows = [f"{'metric':<10} {'vali':>8} {'test':>8} {'members vali':>17} {'members test':>17}"]
    for n in names:
        rows.append(f"{n:<10} {value('best_val_' + n):>8} {value('test_' + n):>8} "
                    f"{spread('best_val_' + n):>17} {spread('test_' + n):>17}")
    return "\n".join(rows)
