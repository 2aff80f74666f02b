"""benchmarks/mq2008_compare.py: the neural ranker trains once per seed set, and the estimate that
stands for its configuration is their mean (real runs on tiny LETOR folds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, load_benchmark
from tests.test_lightgbm_cv import write_letor_folds

SCRIPT = REPO / "benchmarks" / "mq2008_compare.py"


@pytest.mark.parametrize("args, message", [
    (["--neural-overrides", "seed=51"], "as --seed-sets FIRST"),  # seeds go in seed sets, not an override
    (["--neural-row", "lightgbm_tuned"], "--neural-row 'lightgbm_tuned': must start with 'neural'"),
    (["--seed-sets", "42", "51", "--neural-overrides", "ensemble.seeds=18"], "sets of 18 members overlap"),
])
def test_bad_neural_arguments_are_refused_in_one_line_before_anything_runs(tmp_path, args, message):
    r = subprocess.run([sys.executable, str(SCRIPT), "--only", "neural", *args, "--out", str(tmp_path / "out.json")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out.json").exists()


def test_rows_are_named_by_ranker_and_refit_and_neural_row_renames_only_the_neural_ones():
    row_name = load_benchmark(SCRIPT).row_name
    assert row_name("neural", "neural", False) == "neural"
    assert row_name("neural", "neural", True) == "neural_refit"
    assert row_name("neural", "neural18", True) == "neural18_refit"
    assert row_name("lightgbm_tuned", "neural18", True) == "lightgbm_tuned_refit"


def test_default_seed_sets_are_two_disjoint_sets_of_the_ensembles_size_and_overlaps_are_refused():
    seed_sets = load_benchmark(SCRIPT).seed_sets
    assert seed_sets(None, 9) == [42, 51] and seed_sets(None, 18) == [42, 60]
    assert seed_sets([7], 2) == [7] and seed_sets([60, 42], 18) == [60, 42]
    with pytest.raises(ValueError, match="overlap .42-59 and 51-68"):
        seed_sets([42, 51], 18)


@pytest.mark.slow
def test_each_seed_set_is_a_row_and_the_estimate_is_their_mean(tmp_path):
    data = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    out, work = tmp_path / "compare.json", tmp_path / "work"
    incumbent = {"test_mean": {m: 0.5 for m in ("ndcg_1", "ndcg_3", "ndcg_5", "ndcg_10")},
                 "folds": {f: {"test": {"ndcg_10": 0.5}} for f in ("Fold1", "Fold2")}}
    out.write_text(json.dumps({"results": {"neural": incumbent}}))  # the incumbent's row, from an earlier run
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--workdir", str(work), "--out", str(out),
                        "--only", "neural", "--seed-sets", "42", "7", "--neural-row", "neural2",
                        "--neural-overrides", "ensemble.seeds=2",
                        "scorer.hidden_layer_dims=[8]", "train.epochs=2", "train.batch_size=8", "tracking.log_model=false"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    # --neural-row: the new rows land beside the incumbent's, which is kept as it was.
    assert list(rows) == ["neural", "neural2", "neural2_seeds7_8", "neural2_estimate"] and rows["neural"] == incumbent
    assert rows["neural2_estimate"]["from"] == ["neural2", "neural2_seeds7_8"]
    # Each set trained its own members: 42-43 for the config's seed, 7-8 for the other.
    members = sorted(p.name for p in work.glob("outputs/*/*/Fold1/seed_*"))
    assert members == ["seed_42", "seed_43", "seed_7", "seed_8"], members
    first, second, estimate = rows["neural2"], rows["neural2_seeds7_8"], rows["neural2_estimate"]
    assert first["folds"]["Fold1"]["test"] != second["folds"]["Fold1"]["test"]
    for split in ("test", "vali"):
        for m, value in estimate[f"{split}_mean"].items():
            assert value == pytest.approx((first[f"{split}_mean"][m] + second[f"{split}_mean"][m]) / 2)
        assert estimate["folds"]["Fold2"][split]["ndcg_10"] == pytest.approx(
            (first["folds"]["Fold2"][split]["ndcg_10"] + second["folds"]["Fold2"][split]["ndcg_10"]) / 2)
    assert "neural2_estimate" in r.stdout and "Fold2" in r.stdout


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
