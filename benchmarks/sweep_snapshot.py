"""A cross-validated sweep's record, from its own stores: every trial of the Optuna study with its
values, and each complete trial's per-fold validation score from the MLflow runs the sweeper tagged.

A sweep over all five folds reports one number per trial (the mean over the folds); whether a lead is
broad or one fold's luck needs the folds. The sweeper tags every run of a trial with
``optuna_study``/``optuna_trial`` and ranking_exp/cv.py tags each fold's run with ``cv.fold``, so the
per-fold values come straight from the tracking store (an ensemble's member runs, which also carry
``ensemble.seed``, are left out: the fold's ensemble run is the one that counts). The mean of a trial's
per-fold values must equal its Optuna value; the script says so where it does not (the wrong
``--metric``, or a fold's run missing).

Writes JSON (``--out``) and prints a Markdown table with, per trial, how many folds beat
``--baseline``'s (trial 0 by default: the incumbent, enqueued first).
Usage: python benchmarks/sweep_snapshot.py --study NAME --storage sqlite:///DIR/optuna.db
       --tracking-uri sqlite:///DIR/mlflow.db --out benchmarks/results/NAME_sweep.json
       [--status "in progress"] [--metric best_val_ndcg_10] [--baseline 0] [--sweep sweeps/NAME.yaml]
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path

import optuna
from mlflow import MlflowClient

TOLERANCE = 1e-5  # Optuna stores the mean as a float; MLflow stores each fold's value as a double


def per_fold(client: MlflowClient, study_name: str, metric: str) -> dict[int, dict[str, float]]:
    """trial number -> {fold: metric} over the FINISHED fold runs of ``study_name`` in every experiment."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    values: dict[int, dict[str, float]] = collections.defaultdict(dict)
    runs = client.search_runs(experiments, f"tags.optuna_study = '{study_name}' and attributes.status = 'FINISHED'",
                              max_results=50000)
    for run in runs:
        tags = run.data.tags
        if "cv.fold" in tags and "ensemble.seed" not in tags and metric in run.data.metrics:
            values[int(tags["optuna_trial"])][tags["cv.fold"]] = run.data.metrics[metric]
    return values


def snapshot(study: optuna.Study, client: MlflowClient, metric: str) -> list[dict]:
    """One row per trial: state, value, params, the trial it retries, times, and per-fold values."""
    folds = per_fold(client, study.study_name, metric)
    rows = []
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "retry_of": t.system_attrs.get("failed_trial"),
               "start": str(t.datetime_start), "complete": str(t.datetime_complete)}
        if t.state == optuna.trial.TrialState.COMPLETE and folds.get(t.number):
            row["per_fold"] = dict(sorted(folds[t.number].items()))
            mean = sum(row["per_fold"].values()) / len(row["per_fold"])
            row["per_fold_mean_matches_value"] = math.isclose(mean, t.value, abs_tol=TOLERANCE)
        rows.append(row)
    return rows


def table(rows: list[dict], baseline: int) -> str:
    """Markdown: complete trials, their params, value and folds above the baseline trial's."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        return "(no complete trial)"
    names = list(done[0]["params"])
    base = next((r.get("per_fold", {}) for r in done if r["number"] == baseline), {})
    lines = ["| trial | " + " | ".join(names) + f" | value | folds above trial {baseline} |",
             "|---" * (len(names) + 3) + "|"]
    for r in done:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r["params"].get(n) for n in names)]
        folds = r.get("per_fold", {})
        above = "-" if r["number"] == baseline or not base else str(sum(v > base[f] for f, v in folds.items() if f in base))
        lines.append(f"| {r['number']} | " + " | ".join(cells) + f" | {r['value']:.4f} | {above} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", required=True, help="the study's Optuna storage URL")
    p.add_argument("--tracking-uri", required=True, help="the MLflow store the sweep logged to")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--status", default="in progress")
    p.add_argument("--metric", default="best_val_ndcg_10", help="the fold runs' metric the objective averages")
    p.add_argument("--baseline", type=int, default=0)
    p.add_argument("--sweep", default=None, help="the sweep config, recorded in the JSON")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=args.study, storage=args.storage)
    except KeyError:
        print(f"sweep_snapshot: no study {args.study!r} in {args.storage}", file=sys.stderr)
        return 2
    rows = snapshot(study, MlflowClient(tracking_uri=args.tracking_uri), args.metric)
    out = {"study": args.study, "sweep": args.sweep, "status": args.status, "metric": args.metric, "trials": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table(rows, args.baseline))
    off = [r["number"] for r in rows if r.get("per_fold_mean_matches_value") is False]
    if off:
        print(f"warning: trials {off}: the mean of their per-fold {args.metric} is not their value", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
