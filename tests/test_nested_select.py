"""benchmarks/nested_select.py: each fold takes the trial best on its own vali, and trains with exactly
that trial's values (real runs on tiny LETOR folds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO, load_benchmark
from tests.test_lightgbm_cv import write_letor_folds

SCRIPT = REPO / "benchmarks" / "nested_select.py"


def _trial(number, per_fold, state="COMPLETE", **params):
    return {"number": number, "state": state, "params": params, "per_fold": per_fold,
            "value": sum(per_fold.values()) / len(per_fold) if per_fold else None}


# Trial 0 has the best mean but wins only Fold2; trial 1 wins Fold1; trial 3 ties trial 0 on Fold2;
# trial 2 failed (its partial score must not count).
TRIALS = [
    _trial(0, {"Fold1": 0.70, "Fold2": 0.80}, **{"optimizer.learning_rate": 0.01, "train.epochs": 2}),
    _trial(1, {"Fold1": 0.72, "Fold2": 0.60}, **{"optimizer.learning_rate": 0.003, "train.epochs": 3}),
    _trial(2, {"Fold1": 0.90}, state="FAIL", **{"optimizer.learning_rate": 0.05, "train.epochs": 2}),
    _trial(3, {"Fold1": 0.65, "Fold2": 0.80}, **{"optimizer.learning_rate": 0.02, "train.epochs": 2}),
]


def test_each_fold_chooses_on_its_own_vali_alone():
    nested = load_benchmark(SCRIPT)
    assert nested.choose(TRIALS, "Fold1")["trial"] == 1  # not trial 0, best on the mean
    chosen = nested.choose(TRIALS, "Fold2")
    assert chosen["trial"] == 0 and chosen["vali_in_sweep"] == 0.80  # a tie goes to the lower number
    assert chosen["candidates"] == 3 and chosen["params"]["optimizer.learning_rate"] == 0.01
    with pytest.raises(ValueError, match="Fold3"):
        nested.choose(TRIALS, "Fold3")


def test_the_mq2008_record_chooses_per_fold_and_mq2008_best_is_trial_5_where_chosen():
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", "benchmarks/results/mq2008_dasalc_ens_sweep.json",
                        "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert {f: rows[f][1] for f in rows} == {"Fold1": "9", "Fold2": "5", "Fold3": "1", "Fold4": "13", "Fold5": "5"}
    # mq2008_best holds trial 5's values exactly, so the folds that chose it train mq2008_best itself.
    assert "= mq2008_best" in " ".join(rows["Fold2"]) and "= mq2008_best" not in " ".join(rows["Fold1"])


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a sweep record"),
    ('{"trials": [{"number": 0, "state": "COMPLETE", "params": {}}]}', "no trial has per-fold"),
])
def test_a_bad_record_is_one_line_naming_the_file(tmp_path, content, message):
    record = tmp_path / "record.json"
    record.write_text(content)
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", str(record), "--dry-run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert str(record) in r.stderr and message in r.stderr


def test_a_fold_the_record_never_scored_is_refused(tmp_path):
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"trials": TRIALS}))
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", str(record), "--folds", "Fold1", "Fold3", "--dry-run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "Fold3" in r.stderr


@pytest.mark.slow
def test_each_fold_trains_its_chosen_values_and_the_row_joins_the_comparison(tmp_path):
    # One seed set: the estimate over several is mq2008_compare's mean_of_rows, tested there.
    data = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    record, out, work = tmp_path / "record.json", tmp_path / "compare.json", tmp_path / "work"
    record.write_text(json.dumps({"trials": TRIALS}))
    out.write_text(json.dumps({"data": str(data), "convention": "standard", "results": {"lightgbm_defaults": {}}}))
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", str(record), "--data", str(data), "--refit",
                        "--seed-sets", "7", "--workdir", str(work), "--out", str(out), "--overrides",
                        "ensemble.seeds=2", "scorer.hidden_layer_dims=[8]", "train.batch_size=8", "tracking.log_model=false"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["lightgbm_defaults", "neural_nested_refit_seeds7_8"]  # the other rows are kept
    row = results["neural_nested_refit_seeds7_8"]
    assert row["chosen"] == {"Fold1": 1, "Fold2": 0}
    for fold, trial in (("Fold1", TRIALS[1]), ("Fold2", TRIALS[0])):
        run_dir = row["folds"][fold]["run_dir"]
        cfg = OmegaConf.load(f"{run_dir}/.hydra/config.yaml")
        assert cfg.dataset.path.endswith(fold) and list(cfg.train.splits) == ["train", "vali"]
        assert cfg.optimizer.learning_rate == trial["params"]["optimizer.learning_rate"]
        assert cfg.train.epochs == trial["params"]["train.epochs"] and cfg.seed == 7
        recorded = json.loads(open(f"{run_dir}/results.json").read())["metrics"]
        assert row["folds"][fold]["test"]["ndcg_10"] == recorded["test_ndcg_10"]
    assert row["test_mean"]["ndcg_10"] == pytest.approx(
        (row["folds"]["Fold1"]["test"]["ndcg_10"] + row["folds"]["Fold2"]["test"]["ndcg_10"]) / 2)
