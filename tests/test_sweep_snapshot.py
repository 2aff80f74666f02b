"""benchmarks/sweep_snapshot.py: a trial's per-fold values come from its fold runs (not its ensemble
members', not another study's), and a per-fold mean that is not the trial's value is flagged. Real
Optuna and MLflow sqlite stores, filled the way the sweeper and ranking_exp/cv.py tag their runs."""
from __future__ import annotations

import json

import optuna
import pytest
from mlflow import MlflowClient

from tests.helpers import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "sweep_snapshot.py"
FOLDS = {0: {"Fold1": 0.70, "Fold2": 0.60}, 1: {"Fold1": 0.72, "Fold2": 0.59}, 2: {"Fold1": 0.75, "Fold2": 0.65}}


def _module():
    return load_benchmark(SCRIPT)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("stores")
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    client = MlflowClient(tracking_uri=tracking)
    exp = client.create_experiment("ranking_exp")
    for number in range(4):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
        if number == 3:  # failed: no fold runs, no per-fold values
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        tags = {"optuna_study": "s", "optuna_trial": str(number)}
        for fold, value in FOLDS[number].items():
            run = client.create_run(exp, tags={**tags, "cv.fold": fold})
            client.log_metric(run.info.run_id, "best_val_ndcg_10", value)
            client.set_terminated(run.info.run_id)
            member = client.create_run(exp, tags={**tags, "cv.fold": fold, "ensemble.seed": "42"})
            client.log_metric(member.info.run_id, "best_val_ndcg_10", 0.0)  # a member's: must not count
            client.set_terminated(member.info.run_id)
        other = client.create_run(exp, tags={"optuna_study": "other", "optuna_trial": str(number), "cv.fold": "Fold1"})
        client.log_metric(other.info.run_id, "best_val_ndcg_10", 0.0)  # another study's: must not count
        client.set_terminated(other.info.run_id)
        # trial 2's reported value is not its folds' mean (0.70): the script must say so
        study.tell(trial, 0.9 if number == 2 else sum(FOLDS[number].values()) / 2)
    return storage, tracking


def test_per_fold_values_come_from_the_trials_fold_runs_and_a_wrong_mean_is_flagged(stores, tmp_path, capsys):
    storage, tracking = stores
    out = tmp_path / "snap.json"
    assert _module().main(["--study", "s", "--storage", storage, "--tracking-uri", tracking, "--out", str(out)]) == 0
    rows = {r["number"]: r for r in json.loads(out.read_text())["trials"]}
    assert rows[0]["per_fold"] == FOLDS[0] and rows[1]["per_fold"] == FOLDS[1]
    assert rows[0]["per_fold_mean_matches_value"] and not rows[2]["per_fold_mean_matches_value"]
    assert rows[3]["state"] == "FAIL" and "per_fold" not in rows[3]
    printed = capsys.readouterr()
    table = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in printed.out.splitlines()[2:]}
    assert table == {"0": "-", "1": "1", "2": "2"}  # folds above trial 0's; the failed trial has no row
    assert "trials [2]" in printed.err


def test_an_unknown_study_is_a_one_line_error(stores, tmp_path, capsys):
    storage, tracking = stores
    code = _module().main(["--study", "nope", "--storage", storage, "--tracking-uri", tracking,
                           "--out", str(tmp_path / "x.json")])
    assert code == 2 and "no study 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
