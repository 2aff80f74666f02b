"""Processes that open one fresh SQLite store at the same moment (parallel sweep workers, a dashboard
opening the study a sweep is creating) all get a complete, usable schema."""
from __future__ import annotations

import multiprocessing as mp
import queue
import time

import pytest

from ranking_exp.shared_db import open_shared

WORKERS = 6


def _open_both(folder: str, barrier, results) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_url, mlflow_url = f"sqlite:///{folder}/optuna.db", f"sqlite:///{folder}/mlflow.db"
    barrier.wait()
    try:
        storage = open_shared(lambda: optuna.storages.RDBStorage(optuna_url), "optuna", url=optuna_url)
        optuna.create_study(study_name="s", storage=storage, load_if_exists=True).ask()
        client = open_shared(lambda: MlflowClient(mlflow_url), "mlflow", url=mlflow_url)
        exp = client.get_experiment_by_name("Default")
        client.create_run(exp.experiment_id)
        results.put("ok")
    except Exception as e:  # reported to the test, which shows it
        results.put(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")


def test_processes_opening_a_fresh_sqlite_store_together_all_succeed(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_open_both, args=(str(tmp_path), barrier, results)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = []
    deadline = time.time() + 300
    while len(outcomes) < WORKERS and time.time() < deadline:
        try:
            outcomes.append(results.get(timeout=5))
        except queue.Empty:
            pass
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["ok"] * WORKERS, outcomes

    import optuna
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == WORKERS
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(client.search_runs(["0"])) == WORKERS


def test_an_error_that_is_not_a_schema_race_fails_at_once(tmp_path):
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("not a database")

    start = time.monotonic()
    with pytest.raises(ValueError, match="not a database"):
        open_shared(broken, "x", url=f"sqlite:///{tmp_path}/x.db")
    assert calls == [1] and time.monotonic() - start < 5
