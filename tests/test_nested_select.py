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


def _single_fold_record(path, values_and_params):
    """A single-fold sweep's record (sweep_snapshot.py's JSON without per-fold scores)."""
    path.write_text(json.dumps({"trials": [{"number": i, "state": "COMPLETE", "value": v, "params": p}
                                           for i, (v, p) in enumerate(values_and_params)]}))
    return path


# mq2008_best's own tower and batch size, as Optuna stores a list choice (a string).
OWN = {"scorer.hidden_layer_dims": "[256,128,64]", "scorer.dropout": 0.3, "train.batch_size": 16}
OTHER = {"scorer.hidden_layer_dims": "[128,64]", "scorer.dropout": 0.1, "train.batch_size": 64}


def _per_fold_records(tmp_path):
    # Fold1's sweep: its own tower wins; Fold2's: another tower wins (a higher value elsewhere must not count).
    one = _single_fold_record(tmp_path / "fold1.json", [(0.70, OTHER), (0.75, OWN)])
    two = _single_fold_record(tmp_path / "fold2.json", [(0.62, OTHER), (0.61, OWN)])
    return [f"Fold1={one}", f"Fold2={two}"]


def test_per_fold_records_choose_each_fold_from_its_own_sweep_and_carry_only_the_named_params(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", *_per_fold_records(tmp_path), "--params",
                        "scorer.hidden_layer_dims", "train.batch_size", "--dry-run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows["Fold1"].split()[1] == "1" and "= mq2008_best" in rows["Fold1"]  # '[256,128,64]' equals the YAML list
    assert rows["Fold2"].split()[1] == "0" and "train.batch_size=64" in rows["Fold2"] and "dropout" not in rows["Fold2"]
    # All params carried: the sweep's dropout differs from mq2008_best's, so Fold1 is no longer its own values.
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", *_per_fold_records(tmp_path), "--dry-run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "= mq2008_best" not in r.stdout and "scorer.dropout=0.3" in r.stdout


def test_folds_with_the_experiments_own_values_reuse_an_earlier_row_without_training(tmp_path):
    one = _single_fold_record(tmp_path / "fold1.json", [(0.75, OWN)])
    two = _single_fold_record(tmp_path / "fold2.json", [(0.61, OWN), (0.60, OTHER)])
    metrics = ("ndcg_1", "ndcg_3", "ndcg_5", "ndcg_10", "map", "mrr")
    # As mq2008_compare.py writes a cross-validation's row: one command for the row, none per fold.
    earlier = {f: {"test": dict.fromkeys(metrics, v), "vali": dict.fromkeys(metrics, 0.5)}
               for f, v in (("Fold1", 0.71), ("Fold2", 0.69))}
    earlier["Fold2"]["run_dir"] = "/runs/Fold2"
    command = "python -m ranking_exp +experiment=mq2008_best dataset.folds=all"
    out = tmp_path / "compare.json"
    out.write_text(json.dumps({"data": "x", "convention": "standard",
                               "results": {"neural18_refit": {"command": command, "folds": earlier}}}))
    r = subprocess.run([sys.executable, str(SCRIPT), "--record", f"Fold1={one}", f"Fold2={two}", "--params",
                        "scorer.hidden_layer_dims", "train.batch_size", "--reuse", "neural18_refit", "--seed-sets", "42",
                        "--refit", "--row", "neural18_tower", "--data", str(tmp_path / "absent"), "--out", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr  # nothing trained, so no data was needed
    results = json.loads(out.read_text())["results"]
    row = results["neural18_tower_refit"]
    assert set(results) == {"neural18_refit", "neural18_tower_refit"}
    assert {f: row["folds"][f]["reused_from"] for f in row["folds"]} == {"Fold1": "neural18_refit", "Fold2": "neural18_refit"}
    assert row["folds"]["Fold2"]["run_dir"] == "/runs/Fold2" and row["chosen"] == {"Fold1": 0, "Fold2": 0}
    assert row["test_mean"]["ndcg_10"] == pytest.approx(0.70)
    assert row["command"] == f"(Fold1: as in row neural18_refit: {command}); (Fold2: as in row neural18_refit: {command})"


@pytest.mark.parametrize("args, message", [
    (["--record", "RECORDS", "--params", "train.epochs"], "--params train.epochs: not a parameter of"),
    (["--record", "RECORDS", "Fold1=again.json"], "--record: Fold1 given twice"),
    (["--record", "RECORDS", "cv.json"], "--record: give one cross-validated record, or FOLD=PATH"),
    (["--record", "RECORDS", "--folds", "Fold1", "Fold3"], "--record: no record for Fold3"),
    (["--record", "RECORDS", "--row", "lightgbm_x"], "--row 'lightgbm_x': must start with 'neural'"),
    (["--record", "RECORDS", "--reuse", "neural18_refit", "--seed-sets", "42"], "--reuse neural18_refit: no such row in"),
    (["--record", "RECORDS", "--reuse", "neural18_refit"], "--reuse: give one --seed-sets FIRST"),
])
def test_bad_per_fold_arguments_are_one_line(tmp_path, args, message):
    records = _per_fold_records(tmp_path)
    i = args.index("RECORDS")
    args = [*args[:i], *records, *args[i + 1:]]
    r = subprocess.run([sys.executable, str(SCRIPT), *args, "--dry-run", "--out", str(tmp_path / "none.json")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
