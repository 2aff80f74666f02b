"""Is ranker A's lead over ranker B on MQ2008 more than the luck of ~800 test queries? Paired, per query.

A five-fold mean NDCG@10 gap of 0.01 says little by itself: a test fold holds ~157 queries, and one
query's NDCG@10 spans 0..1. This script scores every test query of every fold with each ranker's
exported models, pairs the two rankers query by query, and reports for the five-fold mean (the mean
of the folds' means, the number the README's table shows):

- the mean difference A - B, with a 95% bootstrap interval (queries resampled within each fold,
  ``--resamples`` times) and a two-sided paired sign-flip randomization test's p-value;
- queries won, lost and tied;
- each ranker's mean with its own 95% bootstrap interval, and (``--goal``) where a target lies in it.

A ranker is one or more finished runs (``--a`` / ``--b``, each a path): a cross-validation run dir
(``cv_results.json``: every fold's run) or a single fold's run dir (``results.json``; its fold from
its ``dataset.path``). Given several runs of one ranker (two seed sets of an ensemble), a query's
value is their mean, so the ranker's mean is the README's ``_estimate`` row. Neural exports are
scored through ``ranking_exp.predict`` (the user-facing path), LightGBM exports by their booster on
the same features; each run's recorded test metric is checked to lie between the fold means that
breaking every tie against and in favour of the labels give (the standard metrics break ties at
random; LightGBM's coarse leaves tie often). Reads only test lists of finished runs: it chooses nothing.

``--split vali`` pairs two screened configurations on the validation lists instead (every run must
have trained on train only, else its vali scores are in sample: refused), to say how large a vali
difference a screen can tell from the luck of its ~800 vali queries. ``--average scores`` makes a
ranker of several runs one ensemble (each document's raw scores averaged, as ``ensemble.seeds``'s
export does) instead of the mean of the runs' per-query values.

Usage: python benchmarks/paired_compare.py --a RUN [RUN ...] --b RUN [RUN ...] [--names A B]
       [--data ../shared/data/MQ2008] [--metrics ndcg_10 ndcg_5] [--goal 0.710] [--split test|vali]
       [--average metrics|scores] [--out FILE]
Writes benchmarks/results/paired_compare.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MQ2008 = Path(os.environ.get("RANKING_EXP_MQ2008", REPO.parent / "shared" / "data" / "MQ2008"))
OUT = Path(__file__).parent / "results" / "paired_compare.json"
RECORDED_TOLERANCE = 1e-5  # a run's recorded test value outside its tie-breaking bounds: float32 rounding only


def fold_runs(path: Path) -> dict[str, dict]:
    """``{fold name: the fold run's results.json}`` of a CV run dir or of one fold's run dir."""
    from omegaconf import OmegaConf

    if (path / "cv_results.json").is_file():
        folds = json.loads((path / "cv_results.json").read_text())["folds"]
        return {name: json.loads((Path(f["output_dir"]) / "results.json").read_text()) for name, f in folds.items()}
    if (path / "results.json").is_file():
        config = path / ".hydra" / "config.yaml"
        if config.is_file():  # a single run: its fold is its dataset.path's folder
            fold = Path(str(OmegaConf.load(config).dataset.path)).name
        elif (path.parent / "cv_results.json").is_file():  # one fold of a cross-validation
            fold = path.name
        else:
            sys.exit(f"error: {path}: no .hydra/config.yaml to tell which fold it ran on")
        return {fold: json.loads((path / "results.json").read_text())}
    sys.exit(f"error: {path}: neither cv_results.json nor results.json (not a finished run dir)")


def collect(paths: list[str]) -> dict[str, list[dict]]:
    """``{fold: [results.json of each run]}``; every run must cover the same folds."""
    out: dict[str, list[dict]] = {}
    for p in paths:
        for fold, result in fold_runs(Path(p).resolve()).items():
            out.setdefault(fold, []).append(result)
    counts = {len(v) for v in out.values()}
    if len(counts) != 1:
        sys.exit(f"error: {paths}: the runs cover different folds ({ {k: len(v) for k, v in sorted(out.items())} })")
    return out


def trained_on_train_only(run_dir: Path) -> None:
    """Exits in one line unless the run at ``run_dir`` trained on ``train.splits=[train]``."""
    from omegaconf import OmegaConf

    config = run_dir / ".hydra" / "config.yaml"
    splits = list(OmegaConf.load(config).train.splits) if config.is_file() else None
    if splits != ["train"]:
        sys.exit(f"error: {run_dir}: trained on {splits}, not [train]: its vali scores would be in sample")


def split_file(fold_dir: Path, split: str) -> Path:
    """A fold's ``split`` file: LETOR ships ``.txt``; the shared copy is gzipped."""
    for name in (f"{split}.txt.gz", f"{split}.txt"):
        if (fold_dir / name).is_file():
            return fold_dir / name
    sys.exit(f"error: {fold_dir}: no {split}.txt or {split}.txt.gz")


def file_scores(model_dir: Path, letor_file: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query of ``letor_file`` (file order): its labels and the model's scores."""
    from ranking_exp.data.letor import read_letor
    from ranking_exp.data.spec import FeatureSpec

    spec = FeatureSpec.load(model_dir)
    queries = list(read_letor(letor_file))
    labels = [q.labels.astype(np.float32) for q in queries]
    booster_file = model_dir / "model.txt"
    if booster_file.is_file():  # scorer=lightgbm: columns are the spec's features in order (no context in LETOR)
        import lightgbm as lgb

        from ranking_exp.predict import letor_feature_indices

        booster, indices = lgb.Booster(model_file=str(booster_file)), letor_feature_indices(spec)
        return labels, [booster.predict(q.dense(indices)[0]) for q in queries]
    from ranking_exp.config import MetricsConfig
    from ranking_exp.predict import predict_file

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.txt"
        predict_file(model_dir, letor_file, out, 128, MetricsConfig())
        flat = np.loadtxt(out, dtype=np.float64, ndmin=1)
    ends = np.cumsum([len(y) for y in labels])
    return labels, np.split(flat, ends[:-1])


def per_query(labels: list[np.ndarray], scores: list[np.ndarray], names: list[str], seed: int) -> dict[str, np.ndarray]:
    """Each metric of each query (queries without a relevant document left out: the standard
    convention's ``skip``), by the project's own metric classes, one list at a time."""
    import tensorflow as tf

    from ranking_exp.config import MetricsConfig
    from ranking_exp.metrics import build_metrics

    tf.keras.utils.set_random_seed(seed)
    cfg = MetricsConfig(ndcg_topn=sorted({int(n.split("_")[1]) for n in names if n.startswith("ndcg_")}),
                        map="map" in names, mrr="mrr" in names)
    metrics = {m.name: m for m in build_metrics(cfg) if m.name in names}
    out = {n: [] for n in names}
    for y, s in zip(labels, scores):
        if not (y > 0).any():
            continue
        for n, m in metrics.items():
            m.reset_state()
            m.update_state(y[None, :], np.asarray(s, np.float32)[None, :])
            out[n].append(float(m.result().numpy()))
    return {n: np.asarray(v) for n, v in out.items()}


def ties_broken(labels: list[np.ndarray], scores: list[np.ndarray], best: bool) -> list[np.ndarray]:
    """Scores whose ties are broken in the labels' favour (``best``) or against them, order kept
    otherwise: each score's dense rank plus or minus 0.1 x label / (max label + 1), always under 0.1,
    so distinct scores (a rank apart) never swap."""
    out = []
    for y, s in zip(labels, scores):
        ranks = np.unique(np.asarray(s, np.float32), return_inverse=True)[1].astype(np.float64)
        out.append(ranks + (0.1 if best else -0.1) * np.asarray(y, np.float64) / max(1.0, float(np.max(y)) + 1))
    return out


def ranker_values(runs: dict[str, list[dict]], data: Path, names: list[str], split: str = "test",
                  average: str = "metrics") -> tuple[dict, dict]:
    """``{fold: {metric: per-query values}}`` (the mean over the ranker's runs, or with ``average=
    scores`` the values of their averaged scores) and, on test, the check against what each run
    recorded: ``{fold: {metric: how far the recorded test value lies outside the fold means that
    breaking every tie against / in favour of the labels give}}`` (0 when inside). The standard
    metrics break tied scores at random, so a model with many ties (LightGBM's coarse leaves)
    reproduces its record only within those bounds. Runs record no metric of their vali lists'
    exported model to check against (their best epoch's is), so on vali there is no check."""
    values, drift = {}, {}
    for fold, results in sorted(runs.items()):
        run_scores, outside = [], {n: 0.0 for n in names}
        for r in results:
            labels, scores = file_scores(Path(r["model_dir"]), split_file(data / fold, split))
            run_scores.append(scores)
            if split != "test":
                continue
            worst = per_query(labels, ties_broken(labels, scores, best=False), names, seed=0)
            best = per_query(labels, ties_broken(labels, scores, best=True), names, seed=0)
            for n in names:
                recorded, low, high = r["metrics"][f"test_{n}"], float(worst[n].mean()), float(best[n].mean())
                outside[n] = max(outside[n], low - recorded, recorded - high, 0.0)
        if average == "scores":
            pooled = per_query(labels, [np.mean(q, axis=0) for q in zip(*run_scores)], names, seed=0)
            values[fold] = {n: pooled[n] for n in names}
        else:
            per_run = [per_query(labels, scores, names, seed=0) for scores in run_scores]
            values[fold] = {n: np.mean([v[n] for v in per_run], axis=0) for n in names}
        drift[fold] = outside
    return values, drift


def fold_mean(per_fold: list[np.ndarray]) -> float:
    return float(np.mean([v.mean() for v in per_fold]))


def bootstrap(per_fold: list[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of fold means, with each fold's queries resampled with replacement."""
    return np.mean([v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1) for v in per_fold], axis=0)


def sign_flip_p(diffs: list[np.ndarray], resamples: int, rng: np.random.Generator) -> float:
    """Two-sided p of the mean of fold means of paired differences under random sign flips."""
    observed = abs(fold_mean(diffs))
    flipped = np.mean([(d * rng.choice([-1.0, 1.0], size=(resamples, len(d)))).mean(axis=1) for d in diffs], axis=0)
    return float((1 + np.sum(np.abs(flipped) >= observed - 1e-12)) / (resamples + 1))


def compare(a: dict, b: dict, names: list[str], resamples: int, goal: float | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    folds = sorted(a)
    out = {}
    for n in names:
        va, vb = [a[f][n] for f in folds], [b[f][n] for f in folds]
        diffs = [x - y for x, y in zip(va, vb)]
        ci = lambda samples: [float(np.quantile(samples, 0.025)), float(np.quantile(samples, 0.975))]
        row = {"a_mean": fold_mean(va), "b_mean": fold_mean(vb), "a_ci95": ci(bootstrap(va, resamples, rng)),
               "b_ci95": ci(bootstrap(vb, resamples, rng)), "diff": fold_mean(diffs),
               "diff_ci95": ci(bootstrap(diffs, resamples, rng)), "p_sign_flip": sign_flip_p(diffs, resamples, rng),
               "queries": int(sum(len(d) for d in diffs)), "a_wins": int(sum((d > 1e-9).sum() for d in diffs)),
               "b_wins": int(sum((d < -1e-9).sum() for d in diffs)), "ties": int(sum((abs(d) <= 1e-9).sum() for d in diffs)),
               "per_fold_diff": {f: float(d.mean()) for f, d in zip(folds, diffs)}}
        if goal is not None and n == names[0]:
            samples = bootstrap(va, resamples, rng)
            row["a_share_of_bootstrap_at_or_above_goal"] = float((samples >= goal).mean())
        out[n] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--a", nargs="+", required=True, help="ranker A's run dirs (CV or per-fold runs)")
    p.add_argument("--b", nargs="+", required=True, help="ranker B's run dirs")
    p.add_argument("--names", nargs=2, default=["A", "B"])
    p.add_argument("--data", default=str(MQ2008))
    p.add_argument("--metrics", nargs="+", default=["ndcg_10", "ndcg_5"])
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--goal", type=float, default=None, help="a target for A's first metric (e.g. 0.710)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["test", "vali"], default="test",
                   help="the lists to pair on (vali: runs trained on train only)")
    p.add_argument("--average", choices=["metrics", "scores"], default="metrics",
                   help="several runs of a ranker: mean of their per-query values, or one ensemble of their scores")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    data = Path(a.data).resolve()
    if not (data / "Fold1").is_dir():
        sys.exit(f"MQ2008 not found at {data} (pass --data or set RANKING_EXP_MQ2008)")
    runs_a, runs_b = collect(a.a), collect(a.b)
    if sorted(runs_a) != sorted(runs_b):
        sys.exit(f"error: A covers {sorted(runs_a)}, B {sorted(runs_b)}: pair them on the same folds")
    if a.split == "vali":
        for d in [*a.a, *a.b]:
            trained_on_train_only(Path(d).resolve())
    values_a, drift_a = ranker_values(runs_a, data, a.metrics, a.split, a.average)
    values_b, drift_b = ranker_values(runs_b, data, a.metrics, a.split, a.average)
    worst = max(v for d in (drift_a, drift_b) for f in d.values() for v in f.values())
    if worst > RECORDED_TOLERANCE:
        sys.exit(f"error: a run's recorded test metric lies {worst:.4f} outside what its export scores here "
                 f"with any tie-breaking (> {RECORDED_TOLERANCE}): {drift_a} {drift_b}")
    result = {"a": {"name": a.names[0], "runs": a.a}, "b": {"name": a.names[1], "runs": a.b},
              "folds": sorted(runs_a), "split": a.split, "average": a.average, "resamples": a.resamples, "goal": a.goal,
              "statistic": "mean over folds of the fold's mean over queries with a relevant document",
              "recorded_outside_tie_bounds": worst,
              "metrics": compare(values_a, values_b, a.metrics, a.resamples, a.goal, a.seed)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    A, B = a.names
    print(f"{'metric':<9} {A:>8} {'95% CI':>17} {B:>8} {'95% CI':>17} {A + ' - ' + B:>10} {'95% CI':>18} "
          f"{'p':>7} {'wins/losses/ties':>17}")
    for n, r in result["metrics"].items():
        print(f"{n:<9} {r['a_mean']:>8.4f} {r['a_ci95'][0]:>8.4f}-{r['a_ci95'][1]:.4f} {r['b_mean']:>8.4f} "
              f"{r['b_ci95'][0]:>8.4f}-{r['b_ci95'][1]:.4f} {r['diff']:>+10.4f} {r['diff_ci95'][0]:>+9.4f}..{r['diff_ci95'][1]:+.4f} "
              f"{r['p_sign_flip']:>7.4f} {r['a_wins']:>6}/{r['b_wins']}/{r['ties']}")
    first = result["metrics"][a.metrics[0]]
    if a.goal is not None:
        print(f"{A}'s {a.metrics[0]} >= {a.goal} in {100 * first['a_share_of_bootstrap_at_or_above_goal']:.1f}% "
              f"of the bootstrap resamples")
    checked = (f"every run's recorded test metrics within the bounds its ties allow, to {worst:.1e}"
               if a.split == "test" else "runs trained on train only")
    print(f"({first['queries']} {a.split} queries with a relevant document, {len(result['folds'])} folds; {checked})")


if __name__ == "__main__":
    main()
