"""benchmarks/ensemble_size.py: the ensemble size is chosen on validation lists, and the ensemble of
the first k members it evaluates is the one ranking_exp exports (real TensorFlow, tiny LETOR folds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, load_benchmark
from tests.test_lightgbm_cv import write_letor_folds

SCRIPT = REPO / "benchmarks" / "ensemble_size.py"


def _module():
    return load_benchmark(SCRIPT)


def test_the_size_with_the_best_mean_validation_ndcg_is_chosen_the_smaller_on_a_tie():
    choose = _module().choose
    assert choose([{"ndcg_10": 0.70}, {"ndcg_10": 0.72}, {"ndcg_10": 0.71}]) == 2
    assert choose([{"ndcg_10": 0.70}, {"ndcg_10": 0.72}, {"ndcg_10": 0.72}]) == 2
    assert choose([{"ndcg_10": 0.73}, {"ndcg_10": 0.72}]) == 1


def test_blocks_that_do_not_fit_twice_into_the_ensemble_are_refused_before_training(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "4", "--blocks", "3", "--workdir", str(tmp_path / "w"),
                        "--out", str(tmp_path / "out.json")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--blocks 3" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_prefix_ensembles_are_scored_on_vali_and_the_full_one_matches_its_export(tmp_path):
    data = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    best_json, last_json = tmp_path / "best.json", tmp_path / "last.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--seeds", "2", "--workdir",
                        str(tmp_path / "work"), "--members", "best", "--out", str(best_json), "--overrides",
                        "scorer.hidden_layer_dims=[8]", "train.epochs=3", "train.batch_size=8", "tracking.log_model=false"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    best = json.loads(best_json.read_text())
    assert best["seeds"] == 2 and best["members"] == "best" and list(best["vali_by_fold"]) == ["Fold1", "Fold2"]
    # The mean of both members' scores, evaluated here, is what the exported ensemble recorded.
    assert best["full_ensemble_vs_its_export_max_abs_diff"] < 1e-5
    means = [r["ndcg_10"] for r in best["mean_vali"]]
    assert len(means) == 2 and best["chosen_size"] == means.index(max(means)) + 1
    for k, mean in enumerate(means):
        assert mean == pytest.approx(sum(f[k]["ndcg_10"] for f in best["vali_by_fold"].values()) / 2)
    # Members differ (different seeds), so the one-member "ensemble" is not the two-member one.
    assert best["vali_by_fold"]["Fold1"][0] != best["vali_by_fold"]["Fold1"][1]
    assert "<- chosen" in r.stdout and not any("test" in k for k in best["mean_vali"][0])

    # The same run read again, each member by its last epoch (the default): a single member's best
    # epoch is the one with the highest vali NDCG@10, so its last can only score the same or lower.
    r = subprocess.run([sys.executable, str(SCRIPT), "--run-dir", best["run_dir"], "--out", str(last_json), "--blocks", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(last_json.read_text())
    assert last["members"] == "last" and last["full_ensemble_vs_its_export_max_abs_diff"] is None
    singles = [(best["vali_by_fold"][f][0]["ndcg_10"], last["vali_by_fold"][f][0]["ndcg_10"]) for f in ("Fold1", "Fold2")]
    assert all(b >= l - 1e-6 for b, l in singles) and any(b > l + 1e-6 for b, l in singles), singles

    # --blocks 1: each member alone is a block; the first block is the 1-member prefix, the full
    # ensemble is the 2-member prefix, and the comparison is the full one against the blocks' mean.
    blocks = last["blocks"]
    assert blocks["size"] == 1 and len(blocks["mean_vali_by_block"]) == 2
    for f in ("Fold1", "Fold2"):
        assert blocks["vali_by_fold"][f][0] == last["vali_by_fold"][f][0]
    assert blocks["full_ensemble"] == last["mean_vali"][-1]
    of_blocks = (blocks["mean_vali_by_block"][0]["ndcg_10"] + blocks["mean_vali_by_block"][1]["ndcg_10"]) / 2
    assert blocks["mean_of_blocks"]["ndcg_10"] == pytest.approx(of_blocks)
    assert blocks["full_minus_blocks"]["ndcg_10"] == pytest.approx(last["mean_vali"][-1]["ndcg_10"] - of_blocks)
    assert "disjoint 1-member ensembles" in r.stdout
