"""The LightGBM LambdaMART baseline with its defaults on MQ2008's five folds, through the real command.

Runs ``python -m ranking_exp scorer=lightgbm dataset=letor dataset.path=MQ2008 dataset.folds=all``
(1000 trees at most, learning rate 0.05, 31 leaves, early stopping on vali NDCG@10 after 50
rounds) in a scratch directory, once per metric convention (``standard``: queries without a
relevant document skipped; ``letor``: LETOR 4.0's Eval-Score-4.0.pl rules), and reads each fold's
results back from the run's ``cv_results.json``. The model is the same under both: early
stopping uses LightGBM's own NDCG@10, and ``train.deterministic`` fixes the trees.
Writes benchmarks/results/lightgbm_mq2008.json and prints the test NDCG@1/3/5/10 per fold and
the mean. Usage: python benchmarks/lightgbm_mq2008.py [MQ2008 folder]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MQ2008 = Path(os.environ.get("RANKING_EXP_MQ2008", REPO.parent / "shared" / "data" / "MQ2008"))
OUT = Path(__file__).parent / "results" / "lightgbm_mq2008.json"
METRICS = ("ndcg_1", "ndcg_3", "ndcg_5", "ndcg_10", "map", "mrr")


def run_cv(data: Path, convention: str) -> dict:
    with tempfile.TemporaryDirectory() as work:
        started = time.time()
        # One LightGBM thread: on a few shared cores OpenMP's spinning threads cost more than they give
        # on MQ2008's 10k training documents.
        r = subprocess.run([sys.executable, "-m", "ranking_exp", "scorer=lightgbm", "dataset=letor",
                            f"dataset.path={data}", "dataset.folds=all", "dataset.progress=false",
                            f"metrics.convention={convention}", "train.threads=1", "train.verbose=0",
                            "tracking.log_model=false"], cwd=work, capture_output=True, text=True)
        wall = time.time() - started
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
        [path] = Path(work).glob("outputs/*/*/cv_results.json")
        cv = json.loads(path.read_text())
    folds = {name: {"test": {m: f["metrics"][f"test_{m}"] for m in METRICS},
                    "vali": {m: f["metrics"][f"best_val_{m}"] for m in METRICS},
                    "best_iteration": int(f["metrics"]["best_iteration"])}
             for name, f in cv["folds"].items()}
    mean = {split: {m: cv["metrics"][f"{prefix}{m}_mean"] for m in METRICS}
            for split, prefix in (("test", "test_"), ("vali", "best_val_"))}
    std = {split: {m: cv["metrics"][f"{prefix}{m}_std"] for m in METRICS}
           for split, prefix in (("test", "test_"), ("vali", "best_val_"))}
    return {"wall_seconds": round(wall, 1), "folds": folds, "mean": mean, "std": std}


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else MQ2008
    if not (data / "Fold1").is_dir():
        sys.exit(f"MQ2008 not found at {data} (pass its folder or set RANKING_EXP_MQ2008)")
    import lightgbm

    results = {c: run_cv(data, c) for c in ("standard", "letor")}
    payload = {"data": str(data), "lightgbm": lightgbm.__version__,
               "scorer": {"num_boost_round": 1000, "learning_rate": 0.05, "num_leaves": 31,
                          "early_stopping_rounds": 50, "early_stopping_metric": "LightGBM ndcg@10 on vali"},
               "conventions": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    for convention, res in results.items():
        print(f"\nmetrics.convention={convention}: test NDCG per fold ({res['wall_seconds']:.0f} s wall)")
        print(f"{'fold':<8}" + "".join(f"{m:>10}" for m in METRICS[:4]) + f"{'trees':>8}")
        for name, f in res["folds"].items():
            print(f"{name:<8}" + "".join(f"{f['test'][m]:>10.4f}" for m in METRICS[:4]) + f"{f['best_iteration']:>8}")
        print(f"{'mean':<8}" + "".join(f"{res['mean']['test'][m]:>10.4f}" for m in METRICS[:4]))
        print(f"{'std':<8}" + "".join(f"{res['std']['test'][m]:>10.4f}" for m in METRICS[:4]))


if __name__ == "__main__":
    main()
