"""K-fold cross-validation over the folds of a LETOR directory (``dataset.folds``).

``dataset.path=../shared/data/MQ2008 dataset.folds=all`` (or ``[Fold1,Fold2]``) runs one ordinary
run per fold, any scorer (neural or ``lightgbm``), each recorded as an MLflow child run of one
parent run, which gets every metric's mean and standard deviation over the folds
(``test_ndcg_10_mean``, ``test_ndcg_10_std``, ...), a ``cv_results.json`` artifact and the tags
``ranking_exp.role=cv`` and ``cv.folds``. The objective returned to Hydra/Optuna is the mean of
the folds' objectives, the best *validation* value of ``metrics.monitor``: model selection never
looks at a test fold. Inside a sweep the parent run is the trial's run, a child of the sweep's.

Each fold's run has its own composed config (``dataset.path`` = the fold, ``dataset.folds`` =
null, output in ``<run dir>/<fold>``), so its MLflow params, resume backup and export are its own.
A killed CV command run again resumes the fold it was training (in that fold's earlier MLflow
run) and trains the folds it had finished again, under a new parent run.
With ``ensemble.seeds`` each fold's run is an ensemble (ranking_exp/ensemble.py): its parent run is
the fold's child run here, its members are grandchildren, and the fold's metrics are the ensemble's.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from ranking_exp.config import RunConfig, to_run_config

log = logging.getLogger(__name__)
ROLE_TAG = "ranking_exp.role"


@dataclasses.dataclass
class CVResult:
    run_id: str | None  # the parent MLflow run
    output_dir: str
    objective: float  # mean over folds of the best validation metrics.monitor
    metrics: dict[str, float]  # <metric>_mean and <metric>_std for every fold metric
    folds: dict[str, Any]  # fold name -> its RunResult


def is_cv(run: RunConfig) -> bool:
    return getattr(run.dataset, "folds", None) is not None


def summarize(per_fold: dict[str, dict[str, float]]) -> dict[str, float]:
    """``<metric>_mean`` and ``<metric>_std`` (sample standard deviation, n - 1; 0 for one fold)
    of every metric all folds report."""
    names = set.intersection(*(set(m) for m in per_fold.values())) if per_fold else set()
    out: dict[str, float] = {}
    for name in sorted(names):
        values = np.array([m[name] for m in per_fold.values()], dtype=np.float64)
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def fold_config(cfg: DictConfig, fold_dir: Path, output_dir: str) -> DictConfig:
    """The composed config of one fold's run."""
    fold_cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(fold_cfg, False)
    with open_dict(fold_cfg):
        fold_cfg.dataset.path = str(fold_dir)
        fold_cfg.dataset.folds = None
        fold_cfg.output_dir = output_dir
        fold_cfg.tracking.run_name = None
    return fold_cfg


def run_cv(run: RunConfig, cfg: DictConfig, *, launch_dir: str, run_name: str | None = None,
           tags: dict[str, str] | None = None, hydra_dir: str | None = None) -> CVResult:
    from ranking_exp.experiment import run_training

    folds = run.dataset.fold_dirs()  # checked again: a fold removed since the config was read
    names = [name for name, _ in folds]
    name = run.tracking.run_name or run_name
    parent_name = run.tracking.run_name or (run_name and f"{run_name}-cv")
    chief = run.strategy.is_chief()
    tracker = None
    if chief:
        from ranking_exp.tracking import Tracker

        tracker = Tracker(run.tracking.uri, run.tracking.experiment, launch_dir)
    parent_tags = {**run.tracking.tags, **(tags or {}), "output_dir": run.output_dir, ROLE_TAG: "cv",
                   "cv.folds": ",".join(names), "data": str(Path(run.dataset.path).resolve())}
    started = (tracker.start_run(parent_name, parent_tags, parent_run_id=run.tracking.parent_run_id)
               if tracker else contextlib.nullcontext())
    results: dict[str, Any] = {}
    with started:
        parent_id = tracker.run_id if tracker else None
        if tracker:
            tracker.log_params(OmegaConf.to_container(cfg, resolve=True))
            if hydra_dir:
                tracker.log_artifacts(hydra_dir, "hydra")
        for i, (fold, fold_dir) in enumerate(folds):
            log.info("cross-validation: fold %s (%d of %d)", fold, i + 1, len(folds))
            fold_cfg = fold_config(cfg, fold_dir, str(Path(run.output_dir) / fold))
            fold_run = to_run_config(fold_cfg)
            # Nested under the parent, which is not in fold_cfg: the fold's resume backup is keyed
            # by its config, and the same command must find it again under a new parent run.
            fold_run.tracking.parent_run_id = parent_id
            results[fold] = run_training(fold_run, fold_cfg, launch_dir=launch_dir,
                                         run_name=name and f"{name}-{fold}",
                                         tags={**(tags or {}), "cv.fold": fold, "cv.parent": str(parent_id)})
        summary = summarize({f: r.metrics for f, r in results.items()})
        objective = float(np.mean([r.objective for r in results.values()]))
        result = CVResult(run_id=parent_id, output_dir=run.output_dir, objective=objective, metrics=summary,
                          folds=results)
        if tracker:
            tracker.log_metrics({**summary, "objective_mean": objective})
            path = Path(run.output_dir) / "cv_results.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_payload(result), indent=2) + "\n")
            tracker.log_artifact(path)
    return result


def _payload(result: CVResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "objective": result.objective,
        "metrics": result.metrics,
        "folds": {f: {"run_id": r.run_id, "output_dir": r.output_dir, "objective": r.objective,
                      "metrics": r.metrics, "model_uri": r.model_uri} for f, r in result.folds.items()},
    }


def summary_table(result: CVResult) -> str:
    """Mean +- std over the folds, validation (best model) and test, then test per fold."""
    m = result.metrics
    names = sorted({k[len("test_"):-len("_mean")] for k in m if k.startswith("test_") and k.endswith("_mean")}
                   | {k[len("best_val_"):-len("_mean")] for k in m if k.startswith("best_val_") and k.endswith("_mean")},
                   key=lambda n: (n[:4] != "ndcg", int(n[5:]) if n.startswith("ndcg_") else 0, n))
    folds = list(result.folds)

    def cell(key: str) -> str:
        return f"{m[key + '_mean']:.4f} ± {m[key + '_std']:.4f}" if key + "_mean" in m else ""

    rows = [f"{'metric':<10} {'vali (mean ± std)':>18} {'test (mean ± std)':>18} "
            + " ".join(f"{f:>8}" for f in folds)]
    for n in names:
        per_fold = " ".join(f"{result.folds[f].metrics.get('test_' + n, float('nan')):8.4f}" for f in folds)
        rows.append(f"{n:<10} {cell('best_val_' + n):>18} {cell('test_' + n):>18} {per_fold}")
    return "\n".join(rows)
