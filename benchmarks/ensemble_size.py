"""How many seeds the ensemble of ``mq2008_best`` needs, chosen on the validation folds only.

One cross-validation of ensembles (``+experiment=mq2008_best dataset.folds=all ensemble.seeds=N``;
another ``--experiment``, any LETOR folder of folds as ``--data``), run here unless ``--run-dir`` names
a finished one, trains N members per fold. Then, per fold, every member's export scores the fold's
*validation* lists once, and the ensemble of its first k members (k = 1..N: the plain mean of raw
scores that ranking_exp/ensemble.py exports) is evaluated with the run's metrics. The chosen size is
the k with the highest mean validation NDCG@10 over the folds (the smaller k on a tie). Nothing here
reads a test list or a test metric (the training runs record theirs, as every run does).

Which export of each member (``--members``):

- ``last`` (default): its last epoch. Nothing in a member was chosen on validation, so every k's
  validation score is out of sample; and it is what a refit (``train.splits=[train,vali]``) exports.
- ``best``: its best-by-validation epoch, what the ensemble of the run exported (checked here: the
  N-member mean must give the N-member export's recorded score). Each member's epoch was chosen on
  the same validation lists, so its score there is optimistic, and most so for one member: averaging
  members dilutes the noise each one was chosen for. Comparing sizes this way favours small ones.

``--blocks K`` also scores the disjoint K-member ensembles of the same run (members 1..K, K+1..2K, ...:
what separate seed sets of K score) and compares their mean with the full ensemble's: whether pooling
seed sets into one larger ensemble beats averaging their metrics, on the same members.

Writes benchmarks/results/ensemble_size.json and prints mean validation NDCG@5/NDCG@10 per k.
Usage: python benchmarks/ensemble_size.py [--data ../shared/data/MQ2008] [--experiment mq2008_best] [--seeds 10]
       [--workdir DIR] [--run-dir DIR] [--members last|best] [--blocks K] [--overrides k=v ...]
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MQ2008 = Path(os.environ.get("RANKING_EXP_MQ2008", REPO.parent / "shared" / "data" / "MQ2008"))
OUT = Path(__file__).parent / "results" / "ensemble_size.json"
MONITOR = "ndcg_10"


def train(work: Path, data: Path, experiment: str, seeds: int, overrides: list[str]) -> Path:
    """Runs the cross-validation of ``seeds``-member ensembles in ``work``; returns its run dir."""
    since = time.time()
    args = [f"+experiment={experiment}", "dataset=letor", f"dataset.path={data}", "dataset.folds=all",
            f"ensemble.seeds={seeds}", "dataset.progress=false", "train.verbose=0",
            "metrics.convention=standard", *overrides]
    r = subprocess.run([sys.executable, "-m", "ranking_exp", *args], cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: python -m ranking_exp {' '.join(args)}\n{r.stderr[-3000:]}")
    found = [p for p in work.glob("outputs/*/*/cv_results.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime).parent


def vali_scores(fold_cfg, which: str) -> tuple[object, list[np.ndarray], list[list[np.ndarray]], dict]:
    """The fold's run config, its validation labels per batch, every member's scores per batch
    (in seed order, from its ``which`` export: ``last`` or ``best``) and the ensemble's own recorded metrics."""
    import tensorflow as tf

    from ranking_exp.config import to_run_config
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare
    from ranking_exp.ensemble import FEATURES_SIGNATURE, member_model_dir
    from ranking_exp.experiment import RunResult

    run = to_run_config(fold_cfg)
    path = Path(run.output_dir) / "results.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    if not recorded.get("members"):
        sys.exit(f"error: {path}: no ensemble members recorded (the run needs ensemble.seeds=N)")
    members = [RunResult(**{k: v for k, v in m.items() if k in RunResult.__dataclass_fields__})
               for _, m in sorted(recorded["members"].items(), key=lambda kv: int(kv[0]))]
    dataset = RankingDatasetBuilder(prepare(run.dataset), run.train, run.seed).build_split_dataset("vali")
    batches = list(dataset)
    labels = [b[1].numpy() for b in batches]
    scores = []
    for member in members:
        model_dir = member.exports["last"] if which == "last" else member_model_dir(member)
        fn = tf.saved_model.load(model_dir).signatures[FEATURES_SIGNATURE]
        names = list(fn.structured_input_signature[1])
        scores.append([fn(**{k: f[k] for k in names})["outputs"].numpy() for f, _ in batches])
    return run, labels, scores, recorded["metrics"]


def ensemble_metrics(run, labels: list[np.ndarray], members: list[list[np.ndarray]]) -> dict[str, float]:
    """Validation metrics of the mean-score ensemble of ``members`` (each member's scores per batch)."""
    import tensorflow as tf

    from ranking_exp.metrics import build_metrics

    tf.keras.utils.set_random_seed(run.seed)  # ties broken at random, as evaluate_export does
    metrics = build_metrics(run.metrics)
    for b, y in enumerate(labels):
        mean = np.mean([member[b] for member in members], axis=0)
        for m in metrics:
            m.update_state(y, mean)
    return {m.name: float(m.result().numpy()) for m in metrics}


def prefix_metrics(run, labels: list[np.ndarray], scores: list[list[np.ndarray]]) -> list[dict[str, float]]:
    """Validation metrics of the mean-score ensemble of the first k members, for k = 1..len(scores)."""
    return [ensemble_metrics(run, labels, scores[:k]) for k in range(1, len(scores) + 1)]


def block_metrics(run, labels: list[np.ndarray], scores: list[list[np.ndarray]], size: int) -> list[dict[str, float]]:
    """Validation metrics of each disjoint ``size``-member ensemble, in seed order (members 1..size,
    size+1..2*size, ...): what separate seed sets of that size score, from the same members."""
    return [ensemble_metrics(run, labels, scores[i:i + size]) for i in range(0, len(scores) - size + 1, size)]


def choose(per_size: list[dict[str, float]]) -> int:
    """The ensemble size (1-based) with the highest mean validation NDCG@10; the smaller on a tie."""
    best = max(r[MONITOR] for r in per_size)
    return next(k for k, r in enumerate(per_size, 1) if r[MONITOR] == best)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(MQ2008))
    p.add_argument("--experiment", default="mq2008_best", help="the named experiment config (conf/experiment/)")
    p.add_argument("--seeds", type=int, default=10, help="the largest ensemble (members trained per fold)")
    p.add_argument("--workdir", default=None, help="where the cross-validation runs (default: a temp dir)")
    p.add_argument("--run-dir", default=None, help="a finished cross-validation of ensembles to read instead")
    p.add_argument("--members", choices=["last", "best"], default="last",
                   help="each member's last epoch (default: nothing chosen on vali) or its best-by-vali one")
    p.add_argument("--overrides", nargs="*", default=[], help="extra overrides for the training run")
    p.add_argument("--blocks", type=int, default=None,
                   help="also score the disjoint ensembles of this many members (seeds 42-50, 51-59, ... for 9) "
                        "and compare their mean with the full ensemble's")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    if a.blocks is not None and not 1 <= a.blocks <= a.seeds // 2 and not a.run_dir:
        sys.exit(f"error: --blocks {a.blocks}: must be between 1 and half of --seeds ({a.seeds})")
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from ranking_exp.config import register_configs
    from ranking_exp.cv import fold_config

    register_configs()
    with tempfile.TemporaryDirectory() as scratch:
        started = time.time()
        if a.run_dir:
            run_dir = Path(a.run_dir).resolve()
            if not (run_dir / "cv_results.json").is_file():
                sys.exit(f"error: --run-dir {run_dir}: no cv_results.json (not a finished dataset.folds run)")
        else:
            data = Path(a.data).resolve()
            if not (data / "Fold1").is_dir():
                sys.exit(f"MQ2008 not found at {data} (pass --data or set RANKING_EXP_MQ2008)")
            work = Path(a.workdir or scratch).resolve()
            work.mkdir(parents=True, exist_ok=True)
            run_dir = train(work, data, a.experiment, a.seeds, a.overrides)
        train_seconds = time.time() - started
        # The run's config composed again from its own overrides (Hydra's record of the command).
        with initialize_config_module("ranking_exp.conf", version_base="1.3"):
            root = compose("config", overrides=list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")))
        cv = json.loads((run_dir / "cv_results.json").read_text())
        data_root = Path(root.dataset.path)  # a relative path is the launch directory's
        if not data_root.is_absolute():
            data_root = Path(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.cwd) / data_root
        per_fold, recorded, per_block = {}, {}, {}
        for name, fold in cv["folds"].items():
            cfg = fold_config(root, data_root / name, fold["output_dir"])
            run, labels, scores, recorded[name] = vali_scores(cfg, a.members)
            per_fold[name] = prefix_metrics(run, labels, scores)
            if a.blocks is not None:
                if not 1 <= a.blocks <= len(scores) // 2:
                    sys.exit(f"error: --blocks {a.blocks}: the run has {len(scores)} members per fold, "
                             f"too few for two blocks of {a.blocks}")
                per_block[name] = block_metrics(run, labels, scores, a.blocks)
            print(f"{name}: vali {MONITOR} by size " + " ".join(f"{r[MONITOR]:.4f}" for r in per_fold[name]), flush=True)
    sizes = len(next(iter(per_fold.values())))
    mean = [{m: float(np.mean([f[k][m] for f in per_fold.values()])) for m in per_fold[next(iter(per_fold))][k]}
            for k in range(sizes)]
    chosen = choose(mean)
    # The full ensemble's score here must be the one its own export recorded (the same mean, the same metric).
    drift = (max(abs(per_fold[f][-1][MONITOR] - recorded[f][f"best_val_{MONITOR}"]) for f in per_fold)
             if a.members == "best" else None)
    result = {"run_dir": str(run_dir), "seeds": sizes, "members": a.members, "rule": f"highest mean vali {MONITOR}, smaller on a tie",
              "chosen_size": chosen, "mean_vali": mean, "vali_by_fold": per_fold,
              "full_ensemble_vs_its_export_max_abs_diff": drift, "wall_seconds": round(time.time() - started, 1),
              "train_seconds": round(train_seconds, 1)}
    if per_block:
        n = len(next(iter(per_block.values())))
        block_means = [{m: float(np.mean([f[b][m] for f in per_block.values()])) for m in mean[-1]} for b in range(n)]
        of_blocks = {m: float(np.mean([b[m] for b in block_means])) for m in mean[-1]}
        result["blocks"] = {"size": a.blocks, "mean_vali_by_block": block_means, "mean_of_blocks": of_blocks,
                            "vali_by_fold": per_block, "full_ensemble": mean[-1],
                            "full_minus_blocks": {m: mean[-1][m] - of_blocks[m] for m in of_blocks}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'size':>4} {'vali NDCG@5':>12} {'vali NDCG@10':>13}   (means over {len(per_fold)} folds)")
    for k, r in enumerate(mean, 1):
        print(f"{k:>4} {r['ndcg_5']:>12.4f} {r[MONITOR]:>13.4f}" + ("   <- chosen" if k == chosen else ""))
    if per_block:
        b = result["blocks"]
        print(f"disjoint {a.blocks}-member ensembles: vali {MONITOR} " +
              " ".join(f"{r[MONITOR]:.4f}" for r in b["mean_vali_by_block"]) +
              f", their mean {b['mean_of_blocks'][MONITOR]:.4f}; the {sizes}-member ensemble {mean[-1][MONITOR]:.4f} "
              f"({b['full_minus_blocks'][MONITOR]:+.4f})")
    print(f"(members' {a.members} epoch" + ("" if drift is None else
          f"; the {sizes}-member ensemble here vs its own export's recorded vali {MONITOR}: max |diff| {drift:.1e}") + ")")


if __name__ == "__main__":
    main()
