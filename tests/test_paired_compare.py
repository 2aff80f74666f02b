"""benchmarks/paired_compare.py and blend_screen.py: rankers are paired query by query on real
exports (tiny LETOR folds, real TensorFlow and LightGBM runs), and the statistics say what they
claim: a ranker against itself differs by nothing, a steady lead is significant, folds weigh alike."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, run_cli, load_benchmark
from tests.test_lightgbm_cv import write_letor_folds

SCRIPT = REPO / "benchmarks" / "paired_compare.py"
BLEND = REPO / "benchmarks" / "blend_screen.py"


def _module():
    return load_benchmark(SCRIPT)


def _ranker(per_fold: list[np.ndarray]) -> dict:
    return {f"Fold{i + 1}": {"ndcg_10": v} for i, v in enumerate(per_fold)}


def test_a_ranker_against_itself_differs_by_nothing():
    pc = _module()
    rng = np.random.default_rng(1)
    a = _ranker([rng.random(150), rng.random(160)])
    r = pc.compare(a, a, ["ndcg_10"], resamples=2000, goal=None, seed=0)["ndcg_10"]
    assert r["diff"] == 0 and r["diff_ci95"] == [0.0, 0.0] and r["p_sign_flip"] == 1.0
    assert r["ties"] == r["queries"] == 310 and r["a_wins"] == r["b_wins"] == 0
    assert r["a_ci95"][0] < r["a_mean"] < r["a_ci95"][1]


def test_a_steady_lead_is_significant_and_noise_is_not():
    pc = _module()
    rng = np.random.default_rng(2)
    base = [rng.random(157) for _ in range(5)]
    lead = pc.compare(_ranker([b + 0.03 + rng.normal(0, 0.1, len(b)) for b in base]), _ranker(base),
                      ["ndcg_10"], resamples=4000, goal=None, seed=0)["ndcg_10"]
    assert lead["diff"] == pytest.approx(0.03, abs=0.01)
    assert lead["diff_ci95"][0] > 0 and lead["p_sign_flip"] < 0.001
    noise = pc.compare(_ranker([b + rng.normal(0, 0.1, len(b)) for b in base]), _ranker(base),
                       ["ndcg_10"], resamples=4000, goal=None, seed=0)["ndcg_10"]
    assert noise["diff_ci95"][0] < 0 < noise["diff_ci95"][1] and noise["p_sign_flip"] > 0.05


def test_folds_weigh_alike_whatever_their_query_counts():
    """The statistic is the README's: the mean of the folds' means, not of all queries pooled."""
    pc = _module()
    a = _ranker([np.ones(100), np.zeros(10)])
    b = _ranker([np.zeros(100), np.zeros(10)])
    r = pc.compare(a, b, ["ndcg_10"], resamples=500, goal=0.4, seed=0)["ndcg_10"]
    assert r["a_mean"] == 0.5 and r["diff"] == 0.5 and r["per_fold_diff"] == {"Fold1": 1.0, "Fold2": 0.0}
    assert r["a_share_of_bootstrap_at_or_above_goal"] == 1.0


def test_tied_scores_are_bounded_by_breaking_every_tie_against_and_for_the_labels():
    """The standard metrics break ties at random; the bounds hold any such draw, and scores
    without ties keep their one order."""
    pc = _module()
    labels = [np.array([0, 2, 0, 1, 0, 0], np.float32), np.array([1, 0, 2], np.float32)]
    tied = [np.array([0.5, 0.5, 0.5, 0.2, 0.2, 0.9]), np.array([0.3, 0.3, 0.3])]
    worst = pc.per_query(labels, pc.ties_broken(labels, tied, best=False), ["ndcg_10"], seed=0)["ndcg_10"]
    best = pc.per_query(labels, pc.ties_broken(labels, tied, best=True), ["ndcg_10"], seed=0)["ndcg_10"]
    assert (worst < best).all() and best[1] == pytest.approx(1.0)
    for seed in range(5):
        drawn = pc.per_query(labels, tied, ["ndcg_10"], seed=seed)["ndcg_10"]
        assert (worst - 1e-6 <= drawn).all() and (drawn <= best + 1e-6).all()
    distinct = [np.array([0.1, 0.9, 0.3, 0.5, 0.2, 0.4]), np.array([0.2, 0.1, 0.3])]
    assert (pc.per_query(labels, pc.ties_broken(labels, distinct, best=False), ["ndcg_10"], seed=0)["ndcg_10"]
            == pc.per_query(labels, distinct, ["ndcg_10"], seed=0)["ndcg_10"]).all()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny neural 2-seed ensemble and LightGBM, cross-validated on two tiny folds (train only),
    and LightGBM refit on train + vali."""
    tmp = tmp_path_factory.mktemp("paired")
    data = write_letor_folds(tmp / "letor", folds=("Fold1", "Fold2"))
    common = ["dataset=letor", f"dataset.path={data}", "dataset.folds=all", "dataset.progress=false",
              "train.verbose=0", "tracking.log_model=false"]
    dirs = {}
    for name, overrides in {
        "neural": ["scorer.hidden_layer_dims=[8]", "train.epochs=2", "train.batch_size=8", "ensemble.seeds=2"],
        "lightgbm": ["scorer=lightgbm", "train.threads=1"],
        "lightgbm_refit": ["scorer=lightgbm", "train.threads=1", "train.splits=[train,vali]"],
    }.items():
        before = set(tmp.glob("outputs/*/*/cv_results.json"))
        r = run_cli([*common, *overrides], cwd=tmp, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        [new] = set(tmp.glob("outputs/*/*/cv_results.json")) - before
        dirs[name] = new.parent
    return tmp, data, dirs


def _test_queries_with_a_relevant_document(data: Path) -> int:
    from ranking_exp.data.letor import read_letor

    return sum(int((q.labels > 0).any()) for f in ("Fold1", "Fold2") for q in read_letor(data / f / "test.txt"))


@pytest.mark.slow
def test_exports_are_rescored_to_their_recorded_test_metrics_and_paired(runs):
    tmp, data, dirs = runs
    out = tmp / "paired.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--a", str(dirs["neural"]), "--b", str(dirs["lightgbm"]),
                        "--names", "neural", "lightgbm", "--data", str(data), "--resamples", "500", "--goal", "0.5",
                        "--out", str(out)], cwd=tmp, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    # Each fold's recomputed mean is the test metric its run recorded: the same models, lists and metric.
    assert result["recorded_outside_tie_bounds"] < 1e-5 and result["folds"] == ["Fold1", "Fold2"]
    row = result["metrics"]["ndcg_10"]
    assert row["queries"] == _test_queries_with_a_relevant_document(data)
    assert row["a_wins"] + row["b_wins"] + row["ties"] == row["queries"]
    assert row["diff"] == pytest.approx(row["a_mean"] - row["b_mean"])
    recorded = [json.loads((dirs["neural"] / f / "results.json").read_text())["metrics"]["test_ndcg_10"]
                for f in ("Fold1", "Fold2")]
    assert row["a_mean"] == pytest.approx(np.mean(recorded), abs=1e-4)
    assert "neural - lightgbm" in r.stdout and "of the bootstrap resamples" in r.stdout

    # One fold's run dir stands for that fold; pairing it with a two-fold ranker is refused in one line.
    r = subprocess.run([sys.executable, str(SCRIPT), "--a", str(dirs["neural"] / "Fold1"), "--b",
                        str(dirs["lightgbm"]), "--data", str(data), "--out", str(tmp / "bad.json")],
                       cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr and not (tmp / "bad.json").exists()
    assert r.stderr.strip().splitlines() == ["error: A covers ['Fold1'], B ['Fold1', 'Fold2']: pair them on the same folds"]


@pytest.mark.slow
def test_blends_are_screened_on_vali_from_runs_that_never_trained_on_it(runs):
    tmp, data, dirs = runs
    out = tmp / "blend.json"
    r = subprocess.run([sys.executable, str(BLEND), "--neural", str(dirs["neural"]), "--trees", "5",
                        "--weights", "0", "1", "--data", str(data), "--out", str(out)],
                       cwd=tmp, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    mean = json.loads(out.read_text())["mean_vali"]
    # Standardizing a query's scores keeps its order: weight 0 is the neural ranker, 1 is LightGBM.
    assert mean["neural + 0 x lightgbm_5_trees"]["ndcg_10"] == pytest.approx(mean["neural"]["ndcg_10"])
    assert mean["neural + 1 x lightgbm_5_trees"]["ndcg_10"] == pytest.approx(mean["lightgbm_5_trees"]["ndcg_10"])
    assert mean["neural"]["ndcg_10"] != mean["lightgbm_5_trees"]["ndcg_10"]

    # A refit run has trained on the vali lists: screening it there is refused, nothing written.
    r = subprocess.run([sys.executable, str(BLEND), "--neural", str(dirs["lightgbm_refit"]), "--data", str(data),
                        "--out", str(tmp / "refused.json")], cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr and not (tmp / "refused.json").exists()
    assert "trained on ['train', 'vali'], not [train]" in r.stderr


@pytest.mark.slow
def test_screened_rankers_pair_on_vali_as_one_ensemble_or_as_the_mean_of_their_runs(runs):
    """``--split vali``: the same numbers blend_screen.py computes on its own for the averaged scores
    (``--average scores``) and for each run alone (the default mean of per-query values); a refit
    run trained on those lists is refused in one line, nothing written."""
    tmp, data, dirs = runs
    blend_out = tmp / "blend_vali.json"
    r = subprocess.run([sys.executable, str(BLEND), "--neural", str(dirs["neural"]), "--with", str(dirs["lightgbm"]),
                        "--trees", "5", "--weights", "0", "--data", str(data), "--out", str(blend_out)],
                       cwd=tmp, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    blend = json.loads(blend_out.read_text())["mean_vali"]
    means = {}
    for average in ("scores", "metrics"):
        out = tmp / f"paired_vali_{average}.json"
        r = subprocess.run([sys.executable, str(SCRIPT), "--a", str(dirs["neural"]), str(dirs["lightgbm"]), "--b",
                            str(dirs["lightgbm"]), "--split", "vali", "--average", average, "--resamples", "200",
                            "--data", str(data), "--out", str(out)], cwd=tmp, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["split"] == "vali" and "vali queries with a relevant document" in r.stdout
        means[average] = result["metrics"]["ndcg_10"]["a_mean"]
        assert result["metrics"]["ndcg_10"]["b_mean"] == pytest.approx(blend["with"]["ndcg_10"])
    assert means["scores"] == pytest.approx(blend["neural+with"]["ndcg_10"])
    assert means["metrics"] == pytest.approx((blend["neural"]["ndcg_10"] + blend["with"]["ndcg_10"]) / 2)
    assert means["scores"] != pytest.approx(means["metrics"])

    r = subprocess.run([sys.executable, str(SCRIPT), "--a", str(dirs["neural"]), "--b", str(dirs["lightgbm_refit"]),
                        "--split", "vali", "--data", str(data), "--out", str(tmp / "refused.json")],
                       cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr and not (tmp / "refused.json").exists()
    assert "trained on ['train', 'vali'], not [train]" in r.stderr
