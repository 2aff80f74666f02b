"""benchmarks/mq2008_compare.py: the neural ranker trains once per seed set, and the estimate that
stands for its configuration is their mean (real runs on tiny LETOR folds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.test_lightgbm_cv import write_letor_folds

SCRIPT = REPO / "benchmarks" / "mq2008_compare.py"


def test_a_seed_override_is_refused_in_favour_of_seed_sets(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--only", "neural", "--neural-overrides", "seed=51",
                        "--out", str(tmp_path / "out.json")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--seed-sets" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_each_seed_set_is_a_row_and_the_estimate_is_their_mean(tmp_path):
    data = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    out, work = tmp_path / "compare.json", tmp_path / "work"
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--workdir", str(work), "--out", str(out),
                        "--only", "neural", "--seed-sets", "42", "7", "--neural-overrides", "ensemble.seeds=2",
                        "scorer.hidden_layer_dims=[8]", "train.epochs=2", "train.batch_size=8", "tracking.log_model=false"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert list(rows) == ["neural", "neural_seeds7_8", "neural_estimate"]
    assert rows["neural_estimate"]["from"] == ["neural", "neural_seeds7_8"]
    # Each set trained its own members: 42-43 for the config's seed, 7-8 for the other.
    members = sorted(p.name for p in work.glob("outputs/*/*/Fold1/seed_*"))
    assert members == ["seed_42", "seed_43", "seed_7", "seed_8"], members
    first, second, estimate = rows["neural"], rows["neural_seeds7_8"], rows["neural_estimate"]
    assert first["folds"]["Fold1"]["test"] != second["folds"]["Fold1"]["test"]
    for split in ("test", "vali"):
        for m, value in estimate[f"{split}_mean"].items():
            assert value == pytest.approx((first[f"{split}_mean"][m] + second[f"{split}_mean"][m]) / 2)
        assert estimate["folds"]["Fold2"][split]["ndcg_10"] == pytest.approx(
            (first["folds"]["Fold2"][split]["ndcg_10"] + second["folds"]["Fold2"][split]["ndcg_10"]) / 2)
    assert "neural_estimate" in r.stdout and "Fold2" in r.stdout


@pytest.mark.slow
def test_tuned_lightgbm_sweeps_once_per_sampler_seed_and_the_refit_reuses_those_sweeps(tmp_path):
    import optuna

    data = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    out, work = tmp_path / "compare.json", tmp_path / "work"
    args = [sys.executable, str(SCRIPT), "--data", str(data), "--workdir", str(work), "--out", str(out),
            "--only", "lightgbm_tuned", "--lightgbm-trials", "2", "--lightgbm-sampler-seeds", "0", "3"]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert list(rows) == ["lightgbm_tuned", "lightgbm_tuned_sampler3", "lightgbm_tuned_estimate"]
    assert [rows[k]["sampler_seed"] for k in list(rows)[:2]] == [0, 3]
    storage = f"sqlite:///{work / 'optuna.db'}"
    assert sorted(optuna.study.get_all_study_names(storage)) == [
        "lightgbm_mq2008_fold1", "lightgbm_mq2008_fold1_sampler3", "lightgbm_mq2008_fold2", "lightgbm_mq2008_fold2_sampler3"]
    # Another TPE seed is another draw of trials: the same procedure, other luck.
    first = [optuna.load_study(study_name=n, storage=storage).trials[0].params
             for n in ("lightgbm_mq2008_fold1", "lightgbm_mq2008_fold1_sampler3")]
    assert first[0] != first[1]
    for m, value in rows["lightgbm_tuned_estimate"]["test_mean"].items():
        assert value == pytest.approx((rows["lightgbm_tuned"]["test_mean"][m] + rows["lightgbm_tuned_sampler3"]["test_mean"][m]) / 2)

    # --refit trains each sweep's best parameters again on train + vali, without sweeping again.
    r = subprocess.run([*args, "--refit"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert {"lightgbm_tuned_refit", "lightgbm_tuned_refit_sampler3", "lightgbm_tuned_refit_estimate"} <= set(rows)
    assert "lightgbm_tuned" in rows  # rows of the earlier call are kept
    assert all(len(optuna.load_study(study_name=n, storage=storage).trials) == 2
               for n in optuna.study.get_all_study_names(storage))
    for seed_row in ("", "_sampler3"):
        for fold in ("Fold1", "Fold2"):
            assert (rows[f"lightgbm_tuned_refit{seed_row}"]["folds"][fold]["best_params"]
                    == rows[f"lightgbm_tuned{seed_row}"]["folds"][fold]["best_params"])
