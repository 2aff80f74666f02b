"""Pruning's worth: the same Optuna sweep on MQ2008 Fold1 with and without the median pruner.

Same space, sampler seed and trial budget; reports total epochs trained, wall time, the best
validation NDCG@10 and the test NDCG@10 of the best trial. Writes
benchmarks/results/sweep_pruning.json and prints a table.
Usage: python benchmarks/sweep_pruning.py [--fold ../shared/data/MQ2008/Fold1] [--trials 16] [--epochs 12]
       [--pruners none median successive_halving]   (the first is the baseline the others are compared with)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

OUT = Path(__file__).parent / "results" / "sweep_pruning.json"
SPACE = {
    "scorer.hidden_layer_dims": "choice([64,32],[128,64],[256,128],[256,128,64])",
    "scorer.dropout": "interval(0.0, 0.5)",
    "optimizer.learning_rate": "tag(log, interval(1e-4, 3e-2))",
    "train.batch_size": "choice(16, 32, 64)",
}
# Each pruner as a user would set it for a 12-epoch budget on a small data set.
PRUNER_SETTINGS = {
    "none": [],
    "median": ["hydra.sweeper.pruner.n_startup_trials=4", "hydra.sweeper.pruner.n_warmup_steps=2"],
    "successive_halving": ["hydra.sweeper.pruner.min_resource=2", "hydra.sweeper.pruner.reduction_factor=3"],
    "hyperband": ["hydra.sweeper.pruner.min_resource=2", "hydra.sweeper.pruner.reduction_factor=3"],
}


def run_sweep(work: Path, fold: Path, trials: int, epochs: int, pruner: str) -> dict:
    folder = work / "conf" / "sweep"
    folder.mkdir(parents=True)
    lines = ["# @package _global_", "defaults:", "  - override /hydra/sweeper: ranking_optuna", "hydra:", "  sweeper:",
             "    study_name: bench", "    params:", *(f"      {k}: {v}" for k, v in SPACE.items())]
    (folder / "bench.yaml").write_text("\n".join(lines) + "\n")
    args = [sys.executable, "-m", "ranking_exp", "-m", "+sweep=bench", f"hydra.searchpath=[file://{work / 'conf'}]",
            "dataset=letor", f"dataset.path={fold}", f"train.epochs={epochs}", "train.verbose=0",
            f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.sampler.n_startup_trials=5",
            f"hydra.sweeper.pruner.kind={pruner}", *PRUNER_SETTINGS[pruner], "tracking.log_model=false", "export.best=true",
            "hydra.sweeper.register_model=false"]
    started = time.time()
    r = subprocess.run(args, cwd=work, capture_output=True, text=True)
    wall = time.time() - started
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{work / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ranking_exp")
    children = client.search_runs([exp.experiment_id], filter_string="tags.optuna_study = 'bench'", max_results=1000)
    epochs_trained = sum(len(client.get_metric_history(c.info.run_id, "val_ndcg_10")) for c in children)
    best = study.best_trial
    best_run = next(c for c in children if c.data.tags.get("optuna_trial") == str(best.number))
    states = [t.state.name for t in study.trials]
    return {"pruner": pruner, "wall_seconds": round(wall, 1), "epochs_trained": epochs_trained,
            "trials": len(states), "pruned": states.count("PRUNED"), "best_val_ndcg_10": best.value,
            "best_test_ndcg_10": best_run.data.metrics["test_ndcg_10"], "best_params": best.params}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fold", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/MQ2008/Fold1"))
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--pruners", nargs="+", default=["none", "median", "successive_halving"],
                   choices=sorted(PRUNER_SETTINGS))
    a = p.parse_args()
    results = {}
    for pruner in a.pruners:
        with tempfile.TemporaryDirectory() as work:
            results[pruner] = run_sweep(Path(work), Path(a.fold), a.trials, a.epochs, pruner)
        print(f"{pruner}: {results[pruner]}", flush=True)
    base = results[a.pruners[0]]
    for v in results.values():  # compared with the baseline (no pruning): goal >= 40% saved, |diff| <= 0.005
        v["epochs_saved_fraction"] = round(1 - v["epochs_trained"] / base["epochs_trained"], 3)
        v["best_val_ndcg_10_difference"] = round(v["best_val_ndcg_10"] - base["best_val_ndcg_10"], 4)
    payload = {"fold": a.fold, "trials": a.trials, "epochs": a.epochs, "baseline": a.pruners[0],
               "pruner_settings": {k: PRUNER_SETTINGS[k] for k in a.pruners}, "results": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{'pruner':<20}{'epochs':>8}{'saved':>7}{'pruned':>8}{'wall s':>8}{'best val':>10}{'diff':>8}{'its test':>10}")
    for k, v in results.items():
        print(f"{k:<20}{v['epochs_trained']:>8}{v['epochs_saved_fraction']:>7.0%}{v['pruned']:>8}"
              f"{v['wall_seconds']:>8.0f}{v['best_val_ndcg_10']:>10.4f}{v['best_val_ndcg_10_difference']:>+8.4f}"
              f"{v['best_test_ndcg_10']:>10.4f}")


if __name__ == "__main__":
    main()
