"""Two sweep workers, one PostgreSQL storage: they share the Optuna study and together run
exactly n_trials trials, each once, with one MLflow child run per trial (real PostgreSQL server,
real Optuna, real MLflow on PostgreSQL; skipped without PostgreSQL binaries unless CI is set)."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from hydra_plugins.ranking_exp_sweeper.sweeper import PARENT_RUN_ATTR
from tests.postgres import PostgresServer, running_postgres
from tests.test_sweeper import SMALL_SPACE, TINY_SWEEP, write_sweep

pytestmark = pytest.mark.slow
N_TRIALS = 6
WORKERS = 2
TIMEOUT_S = 600
EXTRA: list[str] = []  # more overrides for both workers


@pytest.fixture(scope="module")
def postgres() -> PostgresServer:
    with running_postgres() as server:
        yield server


def tail(path: Path, n: int = 5000) -> str:
    """A worker's log for a failure message: from its last traceback on, library frames left out."""
    if not path.exists():
        return "<no log>"
    text = path.read_text(errors="replace")
    start = text.rfind("Traceback (most recent call last)")
    if start < 0:
        return text[-n:]
    lines, skip = [], False
    for line in text[start:].splitlines():
        if line.startswith("  File "):
            skip = "site-packages" in line or "<frozen" in line
            if skip:
                continue
        elif skip and line.startswith("    "):
            continue
        skip = False
        lines.append(line)
    return "\n".join(lines)[-n:]


def test_two_workers_share_one_postgres_study_and_run_n_trials_once_each(postgres, tmp_path):
    search_path = write_sweep(tmp_path, "tiny", SMALL_SPACE)
    procs, logs, sweep_dirs = [], [], []
    for i in range(WORKERS):
        sweep_dir = tmp_path / "multirun" / f"worker{i}"
        log = tmp_path / f"worker{i}.log"
        args = [sys.executable, "-m", "ranking_exp", "-m", "+sweep=tiny", search_path, *TINY_SWEEP,
                f"hydra.sweeper.storage={postgres.optuna_url}", f"tracking.uri={postgres.mlflow_url}",
                f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.pruner.kind=none",
                "tracking.log_model=true", *EXTRA,  # models logged and registered, as by default
                f"hydra.sweep.dir={sweep_dir}"]
        with open(log, "w") as out:
            procs.append(subprocess.Popen(args, cwd=tmp_path, env=os.environ.copy(), stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
        sweep_dirs.append(sweep_dir)

    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"sweep workers still running after {TIMEOUT_S}s:\n" + "\n".join(tail(log) for log in logs))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {i} exited {p.returncode}:\n{tail(log)}"

    # --- Optuna: exactly N_TRIALS complete trials; any extra one is a surplus trial never run.
    study = optuna.load_study(study_name="tiny", storage=postgres.optuna_url)
    trials = study.get_trials()
    summary = [(t.number, t.state.name, dict(t.user_attrs)) for t in trials]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == N_TRIALS, summary
    assert len({t.number for t in trials}) == len(trials), summary
    others = [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.FAIL and "surplus" in t.user_attrs for t in others), summary

    # --- MLflow: one child run per complete trial, no trial run twice, both workers ran trials.
    client = MlflowClient(postgres.mlflow_url)
    exp = client.get_experiment_by_name("ranking_exp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.info.run_id for r in runs if r.data.tags.get("ranking_exp.role") == "sweep"
               and r.data.tags.get("ranking_exp.study") == "tiny"}
    assert len(parents) == 1, f"workers should share one parent run: {parents}"
    assert study.user_attrs.get(PARENT_RUN_ATTR) in parents, study.user_attrs
    children = [r for r in runs if "optuna_trial" in r.data.tags]
    numbers = collections.Counter(int(r.data.tags["optuna_trial"]) for r in children)
    assert [n for n, c in numbers.items() if c > 1] == [], f"trials run more than once: {numbers}"
    assert set(numbers) >= {t.number for t in complete}, (numbers, summary)
    assert set(numbers) <= {t.number for t in trials}, (numbers, summary)
    by_number = {int(r.data.tags["optuna_trial"]): r for r in children}
    for t in complete:
        run = by_number[t.number]
        assert run.info.status == "FINISHED", (t.number, run.info.status)
        assert run.data.tags.get("mlflow.parentRunId") in parents, (t.number, run.data.tags, parents)
        assert t.user_attrs.get("mlflow_run_id") == run.info.run_id, (t.number, t.user_attrs)

    ran_by = collections.Counter()
    for r in children:
        out = Path(r.data.tags["output_dir"]).resolve()
        owners = [i for i, d in enumerate(sweep_dirs) if out.is_relative_to(d.resolve())]
        assert len(owners) == 1, (out, sweep_dirs)
        ran_by[owners[0]] += 1
    assert sorted(ran_by) == list(range(WORKERS)), f"trials per worker: {dict(ran_by)}"
    for i, d in enumerate(sweep_dirs):
        jobs = [p for p in d.iterdir() if p.is_dir() and p.name.isdigit()]
        assert len(jobs) == ran_by[i], (i, sorted(p.name for p in jobs), dict(ran_by))
        assert (d / "optimization_results.yaml").exists()

    # Both workers register their best model; the alias ends on a complete trial's run (which
    # one depends on which worker finished last, so it is not pinned to the overall best here).
    if "tracking.log_model=false" not in EXTRA:
        champion = client.get_model_version_by_alias("tiny", "champion")
        assert champion.run_id in {by_number[t.number].info.run_id for t in complete}
