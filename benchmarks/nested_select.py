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

A choice made earlier with one sweep per fold (each on its own fold only, so not even the proposals
are shared) comes as one record per fold, ``--record Fold1=A.json Fold2=B.json ...``: each trial's
value is then that fold's validation score. ``--params`` carries only some of the chosen trial's
values (the rest stay the experiment's, e.g. where a later choice replaced them), and ``--reuse ROW``
takes a fold whose choice is the experiment's own values from an earlier row of the same runs
instead of training it again (training is deterministic on one kind of machine).

Usage: python benchmarks/nested_select.py --record benchmarks/results/mq2008_dasalc_ens_sweep.json
       [--record Fold1=SWEEP1.json Fold2=SWEEP2.json ...] [--params KEY ...] [--row neural_nested]
       [--reuse ROW] [--experiment mq2008_best] [--seed-sets 42 42+SIZE] [--refit] [--folds Fold1 ...]
       [--workdir DIR] [--overrides k=v ...]
       [--data ../shared/data/MQ2008] [--out benchmarks/results/mq2008_compare.json] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml
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


def load_record(path: Path, fold: str | None = None) -> list[dict]:
    """A sweep record's trials. With ``fold``, the record is one fold's own sweep: each complete
    trial's value becomes its validation score on that fold (and only that fold)."""
    try:
        record = json.loads(path.read_text())
        trials = record["trials"]
        if fold is not None:
            trials = [{**t, "per_fold": {fold: t["value"]}} if t.get("state") == "COMPLETE" and t.get("value") is not None
                      else {**t, "per_fold": {}} for t in trials]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        sys.exit(f"error: {path}: not a sweep record (sweep_snapshot.py's JSON with 'trials'): {e}")
    if not any(t.get("per_fold") for t in trials):
        what = "no complete trial has a value" if fold else "no trial has per-fold validation scores (was the sweep cross-validated?)"
        sys.exit(f"error: {path}: {what}")
    return trials


def load_records(specs: list[str]) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """``--record``: one cross-validated record (its trials serve every fold), or ``FOLD=PATH`` per fold
    (one single-fold sweep each). Returns each fold's trials (key ``None``: every fold) and its record."""
    per_fold = [s for s in specs if "=" in s]
    if per_fold and len(per_fold) != len(specs) or not per_fold and len(specs) != 1:
        sys.exit("error: --record: give one cross-validated record, or FOLD=PATH for each fold (not both)")
    if not per_fold:
        return {None: load_record(Path(specs[0]))}, {None: specs[0]}
    trials, paths = {}, {}
    for spec in per_fold:
        fold, path = spec.split("=", 1)
        if fold in trials:
            sys.exit(f"error: --record: {fold} given twice")
        trials[fold], paths[fold] = load_record(Path(path), fold), path
    return trials, paths


def canonical(value):
    """A value as the override it stands for: Optuna stores a list choice as its string ``[256,128,64]``,
    the experiment's YAML holds the list itself."""
    if isinstance(value, str) and value.startswith("["):
        value = yaml.safe_load(value)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return value


def carried(params: dict, keys: list[str] | None, where: str) -> dict:
    """The chosen trial's values that go on top of the experiment: all, or only ``keys``."""
    if keys is None:
        return dict(params)
    missing = [k for k in keys if k not in params]
    if missing:
        sys.exit(f"error: --params {' '.join(missing)}: not a parameter of {where} (it has {', '.join(params)})")
    return {k: params[k] for k in keys}


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


def nested_row(work: Path, data: Path, chosen: dict, experiment: str, first_seed: int, extra: list[str],
               reused: dict | None = None) -> dict:
    """One seed set's row: each fold trained with its chosen values, or taken from ``reused`` (fold ->
    an earlier row's fold result) where its choice is the experiment's own values."""
    folds, wall = {}, 0.0
    for fold, c in chosen.items():
        if reused and fold in reused:
            folds[fold] = {**reused[fold]["result"], "trial": c["trial"], "reused_from": reused[fold]["row"],
                           "command": f"({fold}: as in row {reused[fold]['row']}: {reused[fold]['command']})"}
            print(f"  {fold} (trial {c['trial']}: {experiment}'s own values): test NDCG@10 "
                  f"{folds[fold]['test']['ndcg_10']:.4f}, from {reused[fold]['row']}", flush=True)
            continue
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


def reusable(out: Path, row: str, folds: list[str]) -> dict:
    """``--reuse ROW``: each fold's result in ``out``'s row ``row`` with the command that made it (one
    line where it lacks one). A cross-validation's row keeps one command for all its folds."""
    rows = json.loads(out.read_text())["results"] if out.exists() else {}
    if row not in rows:
        sys.exit(f"error: --reuse {row}: no such row in {out}")
    missing = [f for f in folds if f not in rows[row].get("folds", {})]
    if missing:
        sys.exit(f"error: --reuse {row}: {out} has no {', '.join(missing)} in it")
    return {f: {"row": row, "result": rows[row]["folds"][f],
                "command": rows[row]["folds"][f].get("command") or rows[row].get("command", "?")} for f in folds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--record", nargs="+", required=True,
                   help="a cross-validated sweep's record (sweep_snapshot.py's JSON), or FOLD=PATH per fold for "
                        "single-fold sweeps")
    p.add_argument("--params", nargs="+", default=None,
                   help="carry only these of the chosen trial's values (default: all of them)")
    p.add_argument("--row", default=ROW, help=f"name of the rows written (default {ROW}; must start with 'neural')")
    p.add_argument("--reuse", default=None,
                   help="a row of --out trained with the same settings: folds whose choice is the experiment's own "
                        "values take their result from it instead of training (one seed set only)")
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
    if not re.fullmatch(r"neural[a-z0-9_]*", a.row):
        sys.exit(f"error: --row {a.row!r}: must start with 'neural' and hold only a-z, 0-9 and _")
    experiment_file(a.experiment)  # an unknown --experiment: one line, before anything is read
    try:
        a.seed_sets = compare.seed_sets(a.seed_sets, compare.ensemble_size(a.overrides, a.experiment))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if a.reuse and len(a.seed_sets) != 1:
        sys.exit("error: --reuse: give one --seed-sets FIRST (the reused row holds one seed set)")
    trials, records = load_records(a.record)
    folds = a.folds or sorted({f for ts in trials.values() for t in ts for f in (t.get("per_fold") or {})})
    chosen = {}
    for fold in folds:
        key = None if None in trials else fold
        if key not in trials:
            sys.exit(f"error: --record: no record for {fold}")
        try:
            c = choose(trials[key], fold)
        except ValueError as e:
            sys.exit(f"error: {records[key]}: {e}")
        chosen[fold] = {**c, "params": carried(c["params"], a.params, records[key]), "record": records[key]}
    incumbent = incumbent_values(a.experiment, sorted({k for c in chosen.values() for k in c["params"]}))
    own = {f for f, c in chosen.items() if all(canonical(incumbent.get(k)) == canonical(v) for k, v in c["params"].items())}
    out = Path(a.out)
    reused = reusable(out, a.reuse, sorted(own)) if a.reuse else {}
    print(f"{'fold':<6} {'trial':>5} {'vali (sweep)':>13}  values")
    for fold, c in chosen.items():
        values = f"= {a.experiment}" if fold in own else ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["params"].items())
        source = f", result from {a.reuse}" if fold in reused else ""
        print(f"{fold:<6} {c['trial']:>5} {c['vali_in_sweep']:>13.4f}  {values}  (best of {c['candidates']}{source})")
    if a.dry_run:
        return
    data = Path(a.data).resolve()
    missing = [f for f in folds if f not in reused and not (data / f).is_dir()]
    if missing:
        sys.exit(f"error: {data}: no {', '.join(missing)} (pass --data or set RANKING_EXP_MQ2008)")
    previous = json.loads(out.read_text()) if out.exists() else {"data": str(data), "convention": "standard", "results": {}}
    row = a.row + ("_refit" if a.refit else "")
    extra = [*([compare.REFIT] if a.refit else []), *a.overrides]
    size = compare.ensemble_size(a.overrides, a.experiment)
    record = a.record[0] if len(a.record) == 1 else dict(records)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(a.workdir or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for first in a.seed_sets:
            name = compare.seed_set_row(row, first, compare.DEFAULT_SEED, size)
            rows[name] = {"record": record, **({"params": a.params} if a.params else {}),
                          **nested_row(work, data, chosen, a.experiment, first, extra, reused)}
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
