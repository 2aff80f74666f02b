"""Neural ranker vs LightGBM LambdaMART on MQ2008's five folds, side by side in one MLflow experiment.

One command runs, in one working directory (one ``mlflow.db``, one ``optuna.db``):

1. LightGBM with defaults: ``scorer=lightgbm dataset.folds=all`` (1000 trees at most, learning rate 0.05,
   31 leaves, early stopping on vali).
2. LightGBM tuned per fold through the project's own sweeper: ``-m +sweep=lightgbm_mq2008`` once per fold
   (its own study, ``--lightgbm-trials`` trials), the best trial chosen on that fold's validation set;
   its test metrics are read from its MLflow run. Which trials a sweep tries is luck too, so it runs
   once per TPE seed (``--lightgbm-sampler-seeds``, default 0 and 1: rows ``lightgbm_tuned``,
   ``lightgbm_tuned_sampler1`` and ``lightgbm_tuned_estimate``, their mean), as the neural ranker
   trains once per seed set.
3. The neural ranker: ``+experiment=mq2008_best dataset.folds=all`` (the named experiment config).

Test folds never steer a choice: every selection (early stopping, trial, best epoch) is made on a fold's
validation set. Metrics use the standard convention (gain 2^label - 1, discount log2(rank + 1), queries
without a relevant document skipped). Writes benchmarks/results/mq2008_compare.json and prints the table
the README shows. Open the runs with ``mlflow ui --backend-store-uri sqlite:///<workdir>/mlflow.db``.

With ``--refit``, every ranker, once chosen on vali, trains again on train + vali
(``train.splits=[train,vali]``: the neural run keeps its epochs and exports its last one, LightGBM keeps
the number of trees early stopping found on vali, the tuned one the sweep's best parameters); those rows
get a ``_refit`` suffix beside the others.

The neural ranker is an ensemble of seeds, and one seed set is noisy: two disjoint 9-seed ensembles of
one configuration differ by 0.002 in the five-fold test mean. So it trains once per seed set
(``--seed-sets``, default two disjoint sets from seed 42: members 42-59 and 60-77 with ``mq2008_best``'s
18 seeds, 42-50 and 51-59 with 9; sets that share a member are refused): row ``neural`` for the first
set, ``neural_seeds60_77`` for the next, and ``neural_estimate``, their mean per fold and metric, which
is the number that stands for the configuration. ``--neural-row NAME`` names the neural rows otherwise
(``NAME``, ``NAME_seeds60_77``, ``NAME_estimate``), so that a candidate (another ensemble size, say)
lands beside the incumbent's rows instead of over them.

Usage: python benchmarks/mq2008_compare.py [--data ../shared/data/MQ2008] [--workdir DIR]
       [--lightgbm-trials 24] [--only lightgbm_defaults lightgbm_tuned neural] [--neural-overrides k=v ...]
       [--seed-sets 42 42+SIZE] [--neural-row neural] [--lightgbm-sampler-seeds 0 1] [--refit]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
MQ2008 = Path(os.environ.get("RANKING_EXP_MQ2008", REPO.parent / "shared" / "data" / "MQ2008"))
OUT = Path(__file__).parent / "results" / "mq2008_compare.json"
METRICS = ("ndcg_1", "ndcg_3", "ndcg_5", "ndcg_10", "map", "mrr")
FOLDS = [f"Fold{i}" for i in range(1, 6)]
DEFAULT_SEED = int(OmegaConf.load(REPO / "conf" / "config.yaml").seed)  # members SEED.. are the config's own seed set
COMMON = ["dataset.progress=false", "train.verbose=0", "metrics.convention=standard"]


def _run(args: list[str], work: Path) -> float:
    started = time.time()
    r = subprocess.run([sys.executable, "-m", "ranking_exp", *args], cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: python -m ranking_exp {' '.join(args)}\n{r.stderr[-3000:]}")
    return time.time() - started


def _newest(work: Path, name: str, since: float) -> dict:
    """The newest ``name`` (cv_results.json, results.json) a run wrote under outputs/ after ``since``."""
    found = [p for p in work.glob(f"outputs/*/*/{name}") if p.stat().st_mtime >= since]
    return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())


def cross_validate(work: Path, data: Path, overrides: list[str]) -> dict:
    since = time.time()
    wall = _run([*overrides, "dataset=letor", f"dataset.path={data}", "dataset.folds=all", *COMMON], work)
    cv = _newest(work, "cv_results.json", since)
    return {"command": "python -m ranking_exp " + " ".join([*overrides, f"dataset.path={data}", "dataset.folds=all"]),
            "wall_seconds": round(wall, 1),
            "folds": {name: {"test": {m: f["metrics"][f"test_{m}"] for m in METRICS},
                             "vali": {m: f["metrics"].get(f"best_val_{m}") for m in METRICS}}
                      for name, f in cv["folds"].items()}}


REFIT = "train.splits=[train,vali]"


def lightgbm_tuned(work: Path, data: Path, trials: int, refit: bool = False, sampler_seed: int = 0) -> dict:
    """Per fold: the sweep (TPE seeded with ``sampler_seed``) chooses on vali; with ``refit`` the
    chosen parameters are then trained again on train + vali (the number of trees still found by
    early stopping on vali)."""
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    folds, wall = {}, 0.0
    suffix = "" if sampler_seed == 0 else f"_sampler{sampler_seed}"
    for fold in [f for f in FOLDS if (data / f).is_dir()]:
        study_name = f"lightgbm_mq2008_{fold.lower()}{suffix}"
        storage = f"sqlite:///{work / 'optuna.db'}"
        if study_name not in optuna.study.get_all_study_names(storage=storage):  # a rerun reuses the sweep
            wall += _run(["-m", "+sweep=lightgbm_mq2008", f"dataset.path={data / fold}",
                          f"hydra.sweeper.study_name={study_name}", f"hydra.sweeper.n_trials={trials}",
                          f"hydra.sweeper.sampler.seed={sampler_seed}",
                          "train.threads=1", "tracking.log_model=false", "hydra.sweeper.register_model=false",
                          *COMMON], work)
        best = optuna.load_study(study_name=study_name, storage=storage).best_trial
        run_id = best.user_attrs["mlflow_run_id"]
        if refit:
            since = time.time()
            wall += _run(["scorer=lightgbm", "scorer.subsample_freq=1", *(f"{k}={v}" for k, v in best.params.items()),
                          "dataset=letor", f"dataset.path={data / fold}", REFIT, "train.threads=1",
                          "tracking.log_model=false", *COMMON], work)
            run_id = _newest(work, "results.json", since)["run_id"]
        run = client.get_run(run_id)
        folds[fold] = {"test": {m: run.data.metrics[f"test_{m}"] for m in METRICS},
                       "vali": {m: run.data.metrics.get(f"best_val_{m}") for m in METRICS},
                       "best_trial": best.number, "best_params": best.params}
    command = (f"python -m ranking_exp -m +sweep=lightgbm_mq2008 dataset.path=<MQ2008>/FoldN "
               f"hydra.sweeper.study_name=lightgbm_mq2008_foldN{suffix} hydra.sweeper.n_trials={trials} "
               f"hydra.sweeper.sampler.seed={sampler_seed} train.threads=1")
    if refit:
        command += f"; then the best trial's parameters with {REFIT}"
    return {"command": command, "wall_seconds": round(wall, 1), "trials_per_fold": trials,
            "sampler_seed": sampler_seed, "folds": folds}


def lightgbm_tuned_rows(work: Path, data: Path, row: str, trials: int, refit: bool, sampler_seeds: list[int]) -> dict:
    """One row per sampler seed (``lightgbm_tuned`` for seed 0, ``lightgbm_tuned_sampler1`` ...), then
    (with two or more) ``_estimate``, their mean: the tuned baseline's own luck of the draw, measured
    the way the neural ranker's seed sets are."""
    rows = {}
    for s in sampler_seeds:
        name = row if s == 0 else f"{row}_sampler{s}"
        rows[name] = with_means(lightgbm_tuned(work, data, trials, refit=refit, sampler_seed=s))
        _report(name, rows[name])
    if len(rows) > 1:
        rows[f"{row}_estimate"] = {"from": list(rows), **mean_of_rows(list(rows.values()))}
        _report(f"{row}_estimate", rows[f"{row}_estimate"])
    return rows


def _report(row: str, r: dict) -> None:
    print(f"{row}: test NDCG@10 {r['test_mean']['ndcg_10']:.4f}, NDCG@5 {r['test_mean']['ndcg_5']:.4f} "
          f"({r['wall_seconds']:.0f} s)", flush=True)


def with_means(result: dict) -> dict:
    for split in ("test", "vali"):
        values = {m: [f[split][m] for f in result["folds"].values() if f[split].get(m) is not None] for m in METRICS}
        result[f"{split}_mean"] = {m: sum(v) / len(v) for m, v in values.items() if len(v) == len(result["folds"])}
    return result


def mean_of_rows(rows: list[dict]) -> dict:
    """The per-fold, per-metric mean of rows that ran the same configuration with different seed sets."""
    folds = {fold: {split: {m: sum(r["folds"][fold][split][m] for r in rows) / len(rows) for m in METRICS
                            if all(r["folds"][fold][split].get(m) is not None for r in rows)}
                    for split in ("test", "vali")}
             for fold in rows[0]["folds"]}
    return with_means({"command": " ; ".join(r["command"] for r in rows),
                       "wall_seconds": round(sum(r["wall_seconds"] for r in rows), 1), "folds": folds})


def ensemble_size(overrides: list[str], experiment: str = "mq2008_best") -> int:
    """The neural run's ensemble size: an ``ensemble.seeds=N`` override, else the experiment's."""
    for o in reversed(overrides):
        if o.startswith("ensemble.seeds="):
            return int(o.split("=", 1)[1])
    return int(OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml").ensemble.seeds)


def seed_set_row(row: str, first_seed: int, default_seed: int, size: int) -> str:
    """``neural`` for the config's own seeds, ``neural_seeds51_59`` for another set of the same size."""
    return row if first_seed == default_seed else f"{row}_seeds{first_seed}_{first_seed + size - 1}"


def row_name(name: str, neural_row: str, refit: bool) -> str:
    """A ranker's row: ``neural_row`` names the neural ranker's rows (another ensemble size or configuration
    beside the incumbent's, without overwriting it), and a refit adds ``_refit``."""
    return (neural_row if name == "neural" else name) + ("_refit" if refit else "")


def seed_sets(given: list[int] | None, size: int) -> list[int]:
    """The first seed of each seed set: ``given``, or two disjoint sets from the config's seed (42 and 51
    for 9 members, 42 and 60 for 18). Sets that share a member are refused: their rows would not be
    independent draws of the configuration."""
    firsts = given or [DEFAULT_SEED, DEFAULT_SEED + size]
    ordered = sorted(firsts)
    for a, b in zip(ordered, ordered[1:]):
        if b < a + size:
            raise ValueError(f"--seed-sets {' '.join(map(str, firsts))}: sets of {size} members overlap "
                             f"({a}-{a + size - 1} and {b}-{b + size - 1}); start them at least {size} apart")
    return firsts


def neural_rows(work: Path, data: Path, row: str, seed_sets: list[int], overrides: list[str]) -> dict:
    """One row per seed set, then (with two or more) the ``_estimate`` row, their mean per fold and metric."""
    size, rows = ensemble_size(overrides), {}
    for first in seed_sets:
        name = seed_set_row(row, first, DEFAULT_SEED, size)
        rows[name] = with_means(cross_validate(work, data, ["+experiment=mq2008_best", *overrides, f"seed={first}"]))
        _report(name, rows[name])
    if len(rows) > 1:
        rows[f"{row}_estimate"] = {"from": list(rows), **mean_of_rows(list(rows.values()))}
        _report(f"{row}_estimate", rows[f"{row}_estimate"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(MQ2008))
    p.add_argument("--workdir", default=None, help="keep the MLflow and Optuna stores here (default: a temp dir)")
    p.add_argument("--lightgbm-trials", type=int, default=24)
    p.add_argument("--only", nargs="+", default=["lightgbm_defaults", "lightgbm_tuned", "neural"],
                   choices=["lightgbm_defaults", "lightgbm_tuned", "neural"])
    p.add_argument("--neural-overrides", nargs="*", default=[], help="extra overrides for the neural run")
    p.add_argument("--neural-row", default="neural",
                   help="name of the neural ranker's rows (default neural: the incumbent's; another name keeps them)")
    p.add_argument("--seed-sets", nargs="+", type=int, default=None,
                   help="first seed of each seed set the neural ensemble trains with (default: two disjoint sets "
                        "from the config's seed, 42 and 42 + the ensemble's size); their mean is the _estimate row")
    p.add_argument("--lightgbm-sampler-seeds", nargs="+", type=int, default=[0, 1],
                   help="TPE seed of each tuned-LightGBM sweep (one study per fold and seed); their mean is the _estimate row")
    p.add_argument("--refit", action="store_true",
                   help=f"every ranker, once chosen on vali, trains again on train + vali ({REFIT}); rows get a _refit suffix")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    if any(o.startswith("seed=") for o in a.neural_overrides):
        sys.exit("--neural-overrides: pass the neural ensemble's seeds as --seed-sets FIRST [FIRST ...], not seed=")
    try:
        a.seed_sets = seed_sets(a.seed_sets, ensemble_size(a.neural_overrides))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not re.fullmatch(r"neural[a-z0-9_]*", a.neural_row):
        sys.exit(f"--neural-row {a.neural_row!r}: must start with 'neural' and hold only a-z, 0-9 and _")
    data = Path(a.data).resolve()
    if not (data / "Fold1").is_dir():
        sys.exit(f"MQ2008 not found at {data} (pass --data or set RANKING_EXP_MQ2008)")
    out = Path(a.out)
    previous = json.loads(out.read_text())["results"] if out.exists() else {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(a.workdir or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = dict(previous)  # --only reruns some rows and keeps the others
        refit = [REFIT] if a.refit else []
        for name in a.only:
            row = row_name(name, a.neural_row, a.refit)
            if name == "neural":
                results.update(neural_rows(work, data, row, a.seed_sets, [*refit, *a.neural_overrides]))
                continue
            if name == "lightgbm_defaults":
                results[row] = with_means(cross_validate(work, data, ["scorer=lightgbm", "train.threads=1",
                                                                      "tracking.log_model=false", *refit]))
                _report(row, results[row])
            else:
                results.update(lightgbm_tuned_rows(work, data, row, a.lightgbm_trials, a.refit, a.lightgbm_sampler_seeds))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(data), "convention": "standard", "results": results}, indent=2) + "\n")
    folds = list(next(iter(results.values()))["folds"]) if results else FOLDS
    print(f"\n{'ranker':<32}" + "".join(f"{m:>9}" for m in ("NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10")) +
          "".join(f"{f:>8}" for f in folds))
    for name, r in results.items():
        print(f"{name:<32}" + "".join(f"{r['test_mean'][m]:>9.4f}" for m in METRICS[:4]) +
              "".join(f"{r['folds'][f]['test']['ndcg_10']:>8.4f}" if f in r["folds"] else f"{'-':>8}" for f in folds))
    print(f"(test means over the {len(folds)} folds; per-fold columns: test NDCG@10)")


if __name__ == "__main__":
    main()
