"""Pruning's worth: the same Optuna sweep on MQ2008 Fold1 with and without pruning.

Same space, sampler seed and trial budget for every pruner, all in one run of this script (the first
pruner named is the baseline the others are compared with); reports total epochs trained, wall time,
the best validation NDCG@10 and the test NDCG@10 of the best trial, and keeps every trial's
validation curve. Writes benchmarks/results/sweep_pruning.json (or --out) and prints a table.

Usage: python benchmarks/sweep_pruning.py [--fold ../shared/data/MQ2008/Fold1] [--trials 32] [--epochs 12]
       [--sampler tpe|qmc|random] [--seed 0] [--pruners none median_4_2 percentile_40_3_3 ...] [--out FILE]

With TPE (the default sampler) a pruned sweep is proposed different trials from the baseline's, since TPE
learns from every finished or pruned trial: the rows then differ by the sampler's trajectory as well as by
pruning. With ``--sampler qmc`` (scrambled Sobol, same seed) every sweep is proposed the same
configurations in the same order, so the rows differ by pruning alone.

The training code is copied once at the start and every sweep runs that copy, so edits made to the
working tree during the (long) run cannot make the rows differ.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "sweep_pruning.json"
SPACE = {
    "scorer.hidden_layer_dims": "choice([64,32],[128,64],[256,128],[256,128,64])",
    "scorer.dropout": "interval(0.0, 0.5)",
    "optimizer.learning_rate": "tag(log, interval(1e-4, 3e-2))",
    "train.batch_size": "choice(16, 32, 64)",
}
P = "hydra.sweeper.pruner."
# Each pruner as a user would set it for a 12-epoch budget on a small data set: name -> (label, overrides).
PRUNER_SETTINGS = {
    "none": ("none", [f"{P}kind=none"]),
    "median_4_2": ("median (4 start-up trials, 2 warm-up epochs)",
                   [f"{P}kind=median", f"{P}n_startup_trials=4", f"{P}n_warmup_steps=2"]),
    "median_4_3": ("median (4 start-up trials, 3 warm-up epochs)",
                   [f"{P}kind=median", f"{P}n_startup_trials=4", f"{P}n_warmup_steps=3"]),
    "median_3_3": ("median (3 start-up trials, 3 warm-up epochs)",
                   [f"{P}kind=median", f"{P}n_startup_trials=3", f"{P}n_warmup_steps=3"]),
    "percentile_40_3_3": ("percentile (top 40% kept; 3 start-up trials, 3 warm-up epochs)",
                          [f"{P}kind=percentile", f"{P}percentile=40", f"{P}n_startup_trials=3",
                           f"{P}n_warmup_steps=3"]),
    "percentile_33_4_3": ("percentile (top 33% kept; 4 start-up trials, 3 warm-up epochs)",
                          [f"{P}kind=percentile", f"{P}percentile=33", f"{P}n_startup_trials=4",
                           f"{P}n_warmup_steps=3"]),
    "patient_median_1": ("patient median (patience 1; 4 start-up trials, 2 warm-up epochs)",
                         [f"{P}kind=patient", f"{P}patience=1", f"{P}n_startup_trials=4", f"{P}n_warmup_steps=2"]),
    "successive_halving_2_3": ("successive halving (min 2 epochs, factor 3)",
                               [f"{P}kind=successive_halving", f"{P}min_resource=2", f"{P}reduction_factor=3"]),
    "successive_halving_3_3": ("successive halving (min 3 epochs, factor 3)",
                               [f"{P}kind=successive_halving", f"{P}min_resource=3", f"{P}reduction_factor=3"]),
}
DEFAULT_PRUNERS = ["none", "median_4_2", "percentile_40_3_3", "successive_halving_3_3"]


def replay(curves: list[list[float]], overrides: list[str]) -> dict:
    """The baseline's learning curves, in the baseline's trial order, through a pruner: what it would have cut
    had the sampler proposed the same trials (a real pruned sweep differs: TPE learns from pruned trials)."""
    import warnings

    from hydra_plugins.ranking_exp_sweeper.config import PrunerConfig
    from hydra_plugins.ranking_exp_sweeper.factories import make_pruner

    fields = {}
    for o in overrides:
        key, value = o[len(P):].split("=", 1)
        fields[key] = value if key == "kind" else (float(value) if "." in value else int(value))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction="maximize", pruner=make_pruner(PrunerConfig(**fields)))
        epochs = 0
        for curve in curves:
            trial = study.ask()
            for step, value in enumerate(curve):
                epochs += 1
                trial.report(value, step)
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, max(curve))
    full = sum(map(len, curves))
    return {"epochs_saved_fraction": round(1 - epochs / full, 3),
            "best_val_ndcg_10_difference": round(study.best_value - max(map(max, curves)), 4),
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials)}


def snapshot_code(dest: Path) -> dict:
    """Copy the training code and the sweeper plugin (configs included) to ``dest``; the sweeps import them
    from there (PYTHONPATH comes before the editable install)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("ranking_exp", "hydra_plugins"):
        shutil.copytree(ROOT / package, dest / package, symlinks=False, ignore=ignore)
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--", "ranking_exp", "conf", "sweeps",
                                            "hydra_plugins"))}


def run_sweep(work: Path, code: Path, fold: Path, trials: int, epochs: int, pruner: str, sampler: str = "tpe",
              seed: int = 0) -> dict:
    folder = work / "conf" / "sweep"
    folder.mkdir(parents=True)
    lines = ["# @package _global_", "defaults:", "  - override /hydra/sweeper: ranking_optuna", "hydra:", "  sweeper:",
             "    study_name: bench", "    params:", *(f"      {k}: {v}" for k, v in SPACE.items())]
    (folder / "bench.yaml").write_text("\n".join(lines) + "\n")
    args = [sys.executable, "-m", "ranking_exp", "-m", "+sweep=bench", f"hydra.searchpath=[file://{work / 'conf'}]",
            "dataset=letor", f"dataset.path={fold}", f"train.epochs={epochs}", "train.verbose=0",
            f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.sampler.kind={sampler}", f"hydra.sweeper.sampler.seed={seed}",
            "hydra.sweeper.sampler.n_startup_trials=5",
            *PRUNER_SETTINGS[pruner][1], "tracking.log_model=false", "export.best=true",
            "hydra.sweeper.register_model=false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])}
    started = time.time()
    r = subprocess.run(args, cwd=work, capture_output=True, text=True, env=env)
    wall = time.time() - started
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{work / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ranking_exp")
    children = {c.data.tags.get("optuna_trial"): c for c in
                client.search_runs([exp.experiment_id], filter_string="tags.optuna_study = 'bench'", max_results=1000)}
    per_trial = []
    for t in study.trials:
        run = children[str(t.number)]
        curve = sorted(client.get_metric_history(run.info.run_id, "val_ndcg_10"), key=lambda m: m.step)
        per_trial.append({"number": t.number, "state": t.state.name, "params": t.params,
                          "val_ndcg_10": [round(m.value, 4) for m in curve],
                          "test_ndcg_10": run.data.metrics.get("test_ndcg_10")})
    best = study.best_trial
    states = [t.state.name for t in study.trials]
    return {"pruner": pruner, "label": PRUNER_SETTINGS[pruner][0], "wall_seconds": round(wall, 1),
            "epochs_trained": sum(len(t["val_ndcg_10"]) for t in per_trial), "trials": len(states),
            "pruned": states.count("PRUNED"), "best_trial": best.number, "best_val_ndcg_10": best.value,
            "best_test_ndcg_10": children[str(best.number)].data.metrics["test_ndcg_10"], "best_params": best.params,
            "per_trial": per_trial}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fold", default=str(ROOT.parent / "shared/data/MQ2008/Fold1"))
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--pruners", nargs="+", default=DEFAULT_PRUNERS, choices=sorted(PRUNER_SETTINGS))
    p.add_argument("--sampler", default="tpe", choices=["tpe", "qmc", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: results/sweep_pruning.json (tpe, seed 0), else "
                                                 "results/sweep_pruning_<sampler>_<seed>.json")
    a = p.parse_args()
    if a.out is None:
        a.out = str(OUT if (a.sampler, a.seed) == ("tpe", 0) else OUT.with_name(f"sweep_pruning_{a.sampler}_{a.seed}.json"))
    results = {}
    with tempfile.TemporaryDirectory() as code:
        source = snapshot_code(Path(code))
        for pruner in a.pruners:
            with tempfile.TemporaryDirectory() as work:
                results[pruner] = run_sweep(Path(work), Path(code), Path(a.fold), a.trials, a.epochs, pruner,
                                            a.sampler, a.seed)
            v = results[pruner]
            print(f"{pruner}: {v['epochs_trained']} epochs, {v['pruned']} pruned, {v['wall_seconds']:.0f} s, "
                  f"best val {v['best_val_ndcg_10']:.4f} (trial {v['best_trial']}), test {v['best_test_ndcg_10']:.4f}",
                  flush=True)
    base = results[a.pruners[0]]
    for v in results.values():  # compared with the baseline (no pruning): goal >= 40% saved, |diff| <= 0.005
        v["epochs_saved_fraction"] = round(1 - v["epochs_trained"] / base["epochs_trained"], 3)
        v["wall_saved_fraction"] = round(1 - v["wall_seconds"] / base["wall_seconds"], 3)
        v["best_val_ndcg_10_difference"] = round(v["best_val_ndcg_10"] - base["best_val_ndcg_10"], 4)
        v["goal_met"] = v["epochs_saved_fraction"] >= 0.4 and abs(v["best_val_ndcg_10_difference"]) <= 0.005
    replays = {}
    if base["pruned"] == 0:  # every setting known here, replayed on the baseline's full curves
        curves = [t["val_ndcg_10"] for t in base["per_trial"]]
        replays = {k: replay(curves, o) for k, (_, o) in PRUNER_SETTINGS.items() if k != "none"}
    payload = {"command": " ".join(["python", "benchmarks/sweep_pruning.py", *sys.argv[1:]]), "fold": a.fold,
               "trials": a.trials, "epochs": a.epochs, "sampler": (f"tpe, seed {a.seed}, 5 random start-up trials" if a.sampler == "tpe"
                                              else f"{a.sampler}, seed {a.seed}"),
               "space": SPACE, "baseline": a.pruners[0], "code": source,
               "pruner_settings": {k: PRUNER_SETTINGS[k][1] for k in a.pruners}, "results": results,
               "replay_of_baseline_curves": replays}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{'pruner':<20}{'epochs':>8}{'saved':>7}{'pruned':>8}{'wall s':>8}{'best val':>10}{'diff':>8}{'its test':>10}")
    for k, v in results.items():
        print(f"{k:<20}{v['epochs_trained']:>8}{v['epochs_saved_fraction']:>7.0%}{v['pruned']:>8}"
              f"{v['wall_seconds']:>8.0f}{v['best_val_ndcg_10']:>10.4f}{v['best_val_ndcg_10_difference']:>+8.4f}"
              f"{v['best_test_ndcg_10']:>10.4f}")
    for k, v in replays.items():
        print(f"replay {k:<24} saved {v['epochs_saved_fraction']:.0%}  best {v['best_val_ndcg_10_difference']:+.4f}")


if __name__ == "__main__":
    main()
