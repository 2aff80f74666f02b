"""The embedded default run (`python -m ranking_exp`, no arguments) against random rankings.

Runs the default experiment in a scratch directory, then scores the same synthetic test
split with random scores (mean of 20 draws) and with the generator's hidden relevance
function (an upper reference). Writes benchmarks/results/default_vs_random.json and prints
a table. Usage: python benchmarks/default_vs_random.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ranking_exp.config import MetricsConfig, SyntheticDatasetConfig
from ranking_exp.data.elwc import read_elwc
from ranking_exp.data.prepared import PreparedData
from ranking_exp.data.sources import prepare
from ranking_exp.data.synthetic import oracle_score
from ranking_exp.metrics import evaluate_lists

OUT = Path(__file__).parent / "results" / "default_vs_random.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        started = time.time()
        r = subprocess.run([sys.executable, "-m", "ranking_exp"], cwd=work, capture_output=True, text=True)
        wall = time.time() - started
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
        [path] = Path(work).glob("outputs/*/*/results.json")
        results = json.loads(path.read_text())
    model = {k[len("test_"):]: v for k, v in results["metrics"].items() if k.startswith("test_")}
    cfg = MetricsConfig()
    data: PreparedData = prepare(SyntheticDatasetConfig(  # the run's data (cached by it)
        cache_dir=os.environ.get("RANKING_EXP_CACHE_DIR", "~/.cache/ranking_exp")))
    lists = list(read_elwc(data.split("test").files, data.spec))
    labels = [l for _, _, l in lists]
    rng = np.random.default_rng(0)
    draws = [evaluate_lists(labels, [rng.random(len(l)) for l in labels], cfg) for _ in range(20)]
    random = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
    oracle = evaluate_lists(labels, [oracle_score(c, e) for c, e, _ in lists], cfg)
    payload = {"wall_seconds": round(wall, 1), "train_seconds": results["metrics"]["train_seconds"],
               "test_lists": len(labels), "model": model, "random": random, "oracle": oracle}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"default run: {wall:.0f} s wall ({results['metrics']['train_seconds']:.0f} s training), "
          f"{len(labels)} test queries")
    print(f"{'metric':<10}{'random':>10}{'default':>10}{'oracle':>10}")
    for k in model:
        print(f"{k:<10}{random[k]:>10.4f}{model[k]:>10.4f}{oracle[k]:>10.4f}")


if __name__ == "__main__":
    main()
