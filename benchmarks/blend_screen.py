"""Would blending the neural ensemble with LightGBM (or with another neural configuration) help?
Screened on the validation folds only.

Rank fusion of a neural ranker and gradient-boosted trees is the usual next step once both exist.
Before building it into the framework, this measures what it would gain, on vali lists no model
here was chosen or trained on:

- the neural ranker: a finished cross-validation (``--neural RUN``, trained with
  ``train.splits=[train]``; its last-epoch ensemble export, as ``export.best=false`` runs write)
  scores each fold's vali lists through ``ranking_exp.predict``;
- LightGBM: the project's ``scorer=lightgbm`` defaults, trained here on each fold's train file with a
  **fixed** number of trees (``--trees``), so its vali scores are out of sample too. (Early stopping
  on vali would pick the tree count on the very lists that judge the blend: its vali score is
  inflated, and so is any blend's; ``--early-stopping`` adds that variant, for the record.)
- the blend: per query, each ranker's scores standardized (mean 0, sd 1 over the query's documents),
  then ``(1 - w) * neural + w * lightgbm`` for each ``--weights`` w;
- ``--with RUN``: a second neural cross-validation, averaged with the first (raw scores, as the
  ensemble export does) and blended the same way.

Prints the mean vali NDCG@10 and NDCG@5 over the folds (queries without a relevant document left
out) and writes benchmarks/results/blend_screen.json. Reads no test list.

Usage: python benchmarks/blend_screen.py --neural RUN [--with RUN] [--trees 50 200] [--weights 0.1 0.2 0.3]
       [--early-stopping] [--data ../shared/data/MQ2008] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_compare import MQ2008, collect, file_scores, per_query, split_file, trained_on_train_only  # noqa: E402

OUT = Path(__file__).parent / "results" / "blend_screen.json"
METRICS = ["ndcg_10", "ndcg_5"]


def standardized(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    return (scores - scores.mean()) / (scores.std() + 1e-9)


def lightgbm_params(seed: int) -> dict:
    """The project's ``scorer=lightgbm`` defaults, as ``python -m ranking_exp scorer=lightgbm`` trains them."""
    from hydra import compose, initialize_config_module

    from ranking_exp.config import register_configs, to_run_config
    from ranking_exp.gbdt import lightgbm_params as params_of

    register_configs()
    with initialize_config_module("ranking_exp.conf", version_base="1.3"):
        cfg = compose("config", overrides=["scorer=lightgbm", f"seed={seed}", "train.threads=1", "output_dir=."])
    return params_of(to_run_config(cfg))


def lightgbm_vali_scores(fold: Path, indices: list[int], params: dict, trees: list[int],
                         early_stopping: bool) -> dict[str, list[np.ndarray]]:
    """``{variant: per-query vali scores}`` of LightGBM trained on the fold's train file."""
    import lightgbm as lgb

    from ranking_exp.data.letor import read_letor

    def arrays(name):
        queries = [q for q in read_letor(split_file(fold, name))]
        return (np.concatenate([q.dense(indices)[0] for q in queries]), np.concatenate([q.labels for q in queries]),
                [q.num_docs for q in queries])

    (xt, yt, gt), (xv, yv, gv) = arrays("train"), arrays("vali")
    train = lgb.Dataset(xt, yt, group=gt)
    ends = np.cumsum(gv)[:-1]
    out = {}
    booster = lgb.train(params, train, max(trees))
    for t in trees:
        out[f"lightgbm_{t}_trees"] = np.split(booster.predict(xv, num_iteration=t), ends)
    if early_stopping:
        booster = lgb.train(params, train, 1000, valid_sets=[lgb.Dataset(xv, yv, group=gv)],
                            callbacks=[lgb.early_stopping(100, verbose=False)])
        out["lightgbm_early_stopped_on_vali"] = np.split(booster.predict(xv, num_iteration=booster.best_iteration), ends)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--neural", required=True, help="a neural cross-validation run dir, trained on train only")
    p.add_argument("--with", dest="other", default=None, help="a second neural cross-validation to average with it")
    p.add_argument("--trees", nargs="+", type=int, default=[50, 200])
    p.add_argument("--weights", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    p.add_argument("--early-stopping", action="store_true", help="also LightGBM early-stopped on vali (in sample)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", default=str(MQ2008))
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    started = time.time()
    data = Path(a.data).resolve()
    if not (data / "Fold1").is_dir():
        sys.exit(f"MQ2008 not found at {data} (pass --data or set RANKING_EXP_MQ2008)")
    runs = {"neural": Path(a.neural).resolve()} | ({"with": Path(a.other).resolve()} if a.other else {})
    for run_dir in runs.values():
        trained_on_train_only(run_dir)
    folds = {name: collect([str(d)]) for name, d in runs.items()}
    from ranking_exp.data.spec import FeatureSpec
    from ranking_exp.predict import letor_feature_indices

    params = lightgbm_params(a.seed)
    per_fold: dict[str, dict[str, dict[str, float]]] = {}
    for fold in sorted(folds["neural"]):
        vali = split_file(data / fold, "vali")
        labels, neural = file_scores(Path(folds["neural"][fold][0]["model_dir"]), vali)
        scores = {"neural": neural}
        if "with" in folds:
            scores["with"] = file_scores(Path(folds["with"][fold][0]["model_dir"]), vali)[1]
            scores["neural+with"] = [(x + y) / 2 for x, y in zip(neural, scores["with"])]
        indices = letor_feature_indices(FeatureSpec.load(Path(folds["neural"][fold][0]["model_dir"])))
        trees = lightgbm_vali_scores(data / fold, indices, params, a.trees, a.early_stopping)
        scores.update(trees)
        for base in [b for b in ("neural", "neural+with") if b in scores]:
            for variant, lgb_scores in trees.items():
                for w in a.weights:
                    scores[f"{base} + {w:g} x {variant}"] = [
                        (1 - w) * standardized(x) + w * standardized(y) for x, y in zip(scores[base], lgb_scores)]
        per_fold[fold] = {name: {m: float(v.mean()) for m, v in per_query(labels, s, METRICS, seed=0).items()}
                          for name, s in scores.items()}
        print(f"{fold}: " + "  ".join(f"{k} {v['ndcg_10']:.4f}" for k, v in per_fold[fold].items()
                                      if "+" not in k or k == "neural+with"), flush=True)
    names = list(next(iter(per_fold.values())))
    mean = {n: {m: float(np.mean([f[n][m] for f in per_fold.values()])) for m in METRICS} for n in names}
    result = {"runs": {k: str(v) for k, v in runs.items()}, "lightgbm_params": params, "split": "vali",
              "statistic": "mean over folds of the fold's mean vali metric (queries with a relevant document)",
              "mean_vali": mean, "vali_by_fold": per_fold, "wall_seconds": round(time.time() - started, 1)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'ranker (mean over folds)':<58} {'vali NDCG@10':>12} {'vali NDCG@5':>12}")
    for n, r in mean.items():
        print(f"{n:<58} {r['ndcg_10']:>12.4f} {r['ndcg_5']:>12.4f}")


if __name__ == "__main__":
    main()
