"""The neural ranker's test estimate with its last choice made per fold, on that fold's own vali (nested).

LETOR's folds rotate: each fold's validation queries are another fold's test queries (MQ2008: Fold1's
vali is Fold5's test, Fold2's vali Fold1's test, ...). A configuration chosen on the mean validation
score over all five folds has therefore looked at every fold's test queries, as some other fold's vali.
A nested choice does not: fold k's configuration is chosen on fold k's vali alone, which holds none of
fold k's test queries.

A cross-validated sweep already measures every trial on every fold, so the nested choice needs no
new sweep: this script reads a sweep's record (``sweep_snapshot.py``'s JSON: each complete trial's
per-fold validation score), chooses for each fold the trial best on that fold (ties: the lower trial
number), trains that fold with the trial's values on top of the base experiment (``+experiment=``),
once per seed set, and reads its test metrics. Rows go into ``mq2008_compare.json`` in that script's
format (``neural_nested[_refit]``, ``..._seeds60_77``, ``..._estimate``), so its table and
``paired_compare.py`` (each fold's run dir is kept in the row) take them as they are.

The sweep's trials themselves stay shared by the folds (TPE proposed them from the mean over the
folds), as does whatever the base experiment fixed before the sweep: the estimate removes the leak of
the final choice, not of the model's design.

Usage: python benchmarks/nested_select.py --record benchmarks/results/mq2008_dasalc_ens_sweep.json
       [--experiment mq2008_best] [--seed-sets 42 42+SIZE] [--refit] [--folds Fold1 ...] [--workdir DIR]
       [--overrides k=v ...]
       [--data ../shared/data/MQ2008] [--out benchmarks/results/mq2008_compare.json] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
import mq2008_compare as compare  # noqa: E402  (a sibling script: one format for both)

ROW = "neural_nested"


def choose(trials: list[dict], fold: str) -> dict:
    """The complete trial with the best validation score on ``fold`` alone (ties: the lower number)."""
    scored = [t for t in trials if t.get("state") == "COMPLETE" and fold in (t.get("per_fold") or {})]
    if not scored:
        raise ValueError(f"no complete trial has a validation score for {fold}")
    best = max(scored, key=lambda t: (t["per_fold"][fold], -t["number"]))
    return {"trial": best["number"], "vali_in_sweep": best["per_fold"][fold], "params": best["params"],
            "candidates": len(scored)}


def load_record(path: Path) -> list[dict]:
    try:
        record = json.loads(path.read_text())
        trials = record["trials"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {path}: not a sweep record (sweep_snapshot.py's JSON with 'trials'): {e}")
    if not any(t.get("per_fold") for t in trials):
        sys.exit(f"error: {path}: no trial has per-fold validation scores (was the sweep cross-validated?)")
    return trials


def experiment_file(experiment: str) -> Path:
    """The named experiment's config file; an unknown name ends the script in one line."""
    path = compare.REPO / "conf" / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        sys.exit(f"error: --experiment {experiment}: no {path.relative_to(compare.REPO)}")
    return path


def incumbent_values(experiment: str, keys: list[str]) -> dict:
    """The base experiment's own values for the swept keys (``None`` where it leaves one to the defaults)."""
    cfg = OmegaConf.load(experiment_file(experiment))
    return {k: OmegaConf.select(cfg, k) for k in keys}


def train_fold(work: Path, data: Path, fold: str, overrides: list[str]) -> dict:
    """One fold's run (the base experiment with ``overrides``): its test and vali metrics and run dir."""
    since = time.time()
    args = [*overrides, "dataset=letor", f"dataset.path={data / fold}", *compare.COMMON]
    wall = compare._run(args, work)
    result = compare._newest(work, "results.json", since)
    m = result["metrics"]
    return {"test": {k: m[f"test_{k}"] for k in compare.METRICS},
            "vali": {k: m.get(f"best_val_{k}") for k in compare.METRICS},
            "run_dir": result["output_dir"], "wall_seconds": round(wall, 1),
            "command": "python -m ranking_exp " + " ".join(args)}


def nested_row(work: Path, data: Path, chosen: dict, experiment: str, first_seed: int, extra: list[str]) -> dict:
    folds, wall = {}, 0.0
    for fold, c in chosen.items():
        params = [f"{k}={v}" for k, v in c["params"].items()]  # str(float) is its shortest exact repr
        r = train_fold(work, data, fold, [f"+experiment={experiment}", *extra, *params, f"seed={first_seed}"])
        wall += r["wall_seconds"]
        folds[fold] = {"test": r["test"], "vali": r["vali"], "trial": c["trial"], "run_dir": r["run_dir"],
                       "command": r["command"]}
        print(f"  {fold} (trial {c['trial']}, seeds from {first_seed}): test NDCG@10 {r['test']['ndcg_10']:.4f} "
              f"({r['wall_seconds']:.0f} s)", flush=True)
    return compare.with_means({"command": "; ".join(f["command"] for f in folds.values()),
                               "wall_seconds": round(wall, 1), "folds": folds,
                               "chosen": {f: c["trial"] for f, c in chosen.items()}})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--record", required=True, help="a cross-validated sweep's record (sweep_snapshot.py's JSON)")
    p.add_argument("--experiment", default="mq2008_best", help="the base experiment the trials' values go on top of")
    p.add_argument("--data", default=str(compare.MQ2008))
    p.add_argument("--folds", nargs="+", default=None, help="default: every fold the record scores")
    p.add_argument("--seed-sets", nargs="+", type=int, default=None,
                   help="first seed of each seed set (default: two disjoint sets, 42 and 42 + the ensemble's size)")
    p.add_argument("--refit", action="store_true", help=f"train each chosen fold on train + vali ({compare.REFIT})")
    p.add_argument("--overrides", nargs="*", default=[],
                   help="more overrides for every run, on top of the experiment (the trials' values still win)")
    p.add_argument("--workdir", default=None, help="keep the runs (and MLflow store) here (default: a temp dir)")
    p.add_argument("--out", default=str(compare.OUT))
    p.add_argument("--dry-run", action="store_true", help="print the per-fold choices and train nothing")
    a = p.parse_args()
    if any(o.startswith("seed=") for o in a.overrides):
        sys.exit("error: --overrides: pass the ensemble's seeds as --seed-sets FIRST [FIRST ...], not seed=")
    experiment_file(a.experiment)  # an unknown --experiment: one line, before anything is read
    try:
        a.seed_sets = compare.seed_sets(a.seed_sets, compare.ensemble_size(a.overrides, a.experiment))
    except ValueError as e:
        sys.exit(f"error: {e}")
    record = Path(a.record)
    trials = load_record(record)
    folds = a.folds or sorted({f for t in trials for f in (t.get("per_fold") or {})})
    try:
        chosen = {fold: choose(trials, fold) for fold in folds}
    except ValueError as e:
        sys.exit(f"error: {record}: {e}")
    incumbent = incumbent_values(a.experiment, sorted({k for c in chosen.values() for k in c["params"]}))
    print(f"{'fold':<6} {'trial':>5} {'vali (sweep)':>13}  values")
    for fold, c in chosen.items():
        same = all(incumbent.get(k) == v for k, v in c["params"].items())
        values = f"= {a.experiment}" if same else ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in c["params"].items())
        print(f"{fold:<6} {c['trial']:>5} {c['vali_in_sweep']:>13.4f}  {values}  (best of {c['candidates']})")
    if a.dry_run:
        return
    data = Path(a.data).resolve()
    missing = [f for f in folds if not (data / f).is_dir()]
    if missing:
        sys.exit(f"error: {data}: no {', '.join(missing)} (pass --data or set RANKING_EXP_MQ2008)")
    out = Path(a.out)
    previous = json.loads(out.read_text()) if out.exists() else {"data": str(data), "convention": "standard", "results": {}}
    row = ROW + ("_refit" if a.refit else "")
    extra = [*([compare.REFIT] if a.refit else []), *a.overrides]
    size = compare.ensemble_size(a.overrides, a.experiment)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(a.workdir or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for first in a.seed_sets:
            name = compare.seed_set_row(row, first, compare.DEFAULT_SEED, size)
            rows[name] = {"record": str(record), **nested_row(work, data, chosen, a.experiment, first, extra)}
            compare._report(name, rows[name])
        if len(rows) > 1:
            rows[f"{row}_estimate"] = {"from": list(rows), "chosen": rows[next(iter(rows))]["chosen"],
                                       **compare.mean_of_rows(list(rows.values()))}
            compare._report(f"{row}_estimate", rows[f"{row}_estimate"])
    previous["results"].update(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {', '.join(rows)} to {out}")


if __name__ == "__main__":
    main()
