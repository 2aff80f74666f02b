"""Distribution strategies and fault recovery with real processes on 127.0.0.1: a two-worker
multi_worker_mirrored run against a single-worker one, bad clusters failing in one line,
parameter_server and tpu refusing, and a run killed with SIGKILL resuming from its backup."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ranking_exp.cluster import free_ports
from tests.helpers import run_cli, tiny

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one ``error:`` line and no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    return errors[0]


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ranking_exp")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


@pytest.mark.slow
def test_two_workers_train_export_once_and_match_a_single_worker(tmp_path):
    overrides = tiny(["train.epochs=3", "seed=7", "train.batch_size=16", "tracking.log_model=false"])
    (tmp_path / "one").mkdir()
    single = run_cli([*overrides, "hydra.run.dir=single"], tmp_path / "one", timeout=240, env=QUIET)
    assert single.returncode == 0, single.stderr[-3000:]
    (tmp_path / "two").mkdir()
    multi = run_cli(["workers=2", "timeout=240", "--", *overrides, "hydra.run.dir=multi"], tmp_path / "two",
                    module="ranking_exp.launch", timeout=300, env=QUIET)
    assert multi.returncode == 0, multi.stdout[-5000:] + multi.stderr[-2000:]

    chief = tmp_path / "two" / "multi"
    assert (chief / "export" / "latest_model" / "saved_model.pb").exists()
    assert (chief / "export" / "best_model_by_metric" / "saved_model.pb").exists()
    assert not (chief / "worker-1" / "export").exists()  # the chief alone exports
    assert not list(chief.glob("**/workertemp_*"))
    _, recorded = runs(tmp_path / "two")
    assert [r.info.status for r in recorded] == ["FINISHED"]  # and alone records
    assert recorded[0].data.params["strategy.kind"] == "multi_worker_mirrored"

    one = json.loads((tmp_path / "one" / "single" / "results.json").read_text())["metrics"]
    two = json.loads((chief / "results.json").read_text())["metrics"]
    # Same seed and global batch; each worker reads its own shard, so batches differ a little.
    assert two["best_val_ndcg_10"] == pytest.approx(one["best_val_ndcg_10"], abs=0.03)


def test_parameter_server_refuses_before_training_in_one_line(tmp_path):
    line = one_error_line(run_cli(tiny(["strategy=parameter_server"]), tmp_path, timeout=120, env=QUIET))
    assert line.startswith("error: strategy: strategy=parameter_server is not supported:")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("address,message", [
    ("", "error: strategy.tpu: no TPU found on this machine"),
    ("grpc://127.0.0.1:{port}", "error: strategy.tpu: no TPU found at grpc://127.0.0.1:"),
])
def test_tpu_without_a_tpu_fails_at_start_in_one_line(tmp_path, address, message):
    address = address.format(port=free_ports(1)[0])
    started = time.time()
    line = one_error_line(run_cli(tiny(["strategy=tpu", f"strategy.tpu='{address}'"]), tmp_path, timeout=120,
                                  env=QUIET))
    assert line.startswith(message) and time.time() - started < 60
    assert runs(tmp_path)[1] == []  # no MLflow run


def _workers(ports) -> str:
    return "strategy.workers=[" + ",".join(f"127.0.0.1:{p}" for p in ports) + "]"


@pytest.mark.parametrize("case", ["index_out_of_range", "tf_config_missing_chief", "tf_config_bad_index",
                                  "empty_job", "duplicate_address"])
def test_bad_cluster_configs_fail_before_tensorflow_in_one_line(tmp_path, case):
    ports = free_ports(2)
    env = dict(QUIET)
    overrides = ["strategy=multi_worker_mirrored"]
    tf_config = lambda cluster, task: json.dumps({"cluster": cluster, "task": task})  # noqa: E731
    expected = {
        "index_out_of_range": "error: strategy.task_index: 2 is out of range for 2 strategy.workers (0..1)",
        "tf_config_missing_chief": "error: TF_CONFIG: task type 'chief' has no entry in the cluster",
        "tf_config_bad_index": "error: TF_CONFIG: task index 3 is out of range for 2 worker address(es)",
        "empty_job": "error: TF_CONFIG: job 'worker' needs a non-empty list",
        "duplicate_address": "error: strategy.workers: 127.0.0.1:",
    }[case]
    if case == "index_out_of_range":
        overrides += [_workers(ports), "strategy.task_index=2"]
    elif case == "duplicate_address":
        overrides += [_workers([ports[0], ports[0]])]
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        task = {"type": "worker", "index": 3 if case == "tf_config_bad_index" else 0}
        if case == "tf_config_missing_chief":
            task = {"type": "chief", "index": 0}
        if case == "empty_job":
            cluster = {"worker": []}
        env["TF_CONFIG"] = tf_config(cluster, task)
    line = one_error_line(run_cli(tiny(overrides), tmp_path, timeout=60, env=env))
    assert line.startswith(expected), line


def test_a_port_in_use_fails_at_start_in_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        proc = run_cli(tiny(["strategy=multi_worker_mirrored", _workers([port, free_ports(1)[0]])]), tmp_path,
                       timeout=120, env=QUIET)
    finally:
        busy.close()
    line = one_error_line(proc)
    assert line.startswith(f"error: strategy.workers: worker[0] cannot listen on 127.0.0.1:{port}: port {port} "
                           "is already in use")


def test_a_worker_whose_chief_never_starts_fails_in_one_line_instead_of_hanging(tmp_path):
    ports = free_ports(2)
    started = time.time()
    proc = run_cli(tiny(["strategy=multi_worker_mirrored", _workers(ports), "strategy.task_index=1",
                         "strategy.connect_timeout=4"]), tmp_path, timeout=120, env=QUIET)
    line = one_error_line(proc)
    assert line.startswith("error: strategy.workers: worker[1] could not form the cluster within 4 s")
    assert f"worker[0] at 127.0.0.1:{ports[0]} did not come up" in line
    assert time.time() - started < 60
    assert runs(tmp_path)[1] == []


def test_the_launcher_stops_every_worker_when_one_fails(tmp_path):
    """Worker 1 fails while building its model; worker 0 would wait for it (until
    strategy.collective_timeout): the launcher stops it and reports worker 1's failure."""
    from tests.helpers import REPO

    started = time.time()
    proc = run_cli(["workers=2", "timeout=100", "--", *tiny([
        "scorer=custom", "scorer.target=tests.plugins.scorer_failing_on_worker", "+scorer.kwargs.index=1"])],
        tmp_path, module="ranking_exp.launch", timeout=120, env={**QUIET, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: launch: worker 1 failed: exit code 1 (see its output above)"
    assert "RuntimeError: boom on worker 1" in proc.stdout
    assert time.time() - started < 90
    _, recorded = runs(tmp_path)
    assert [r.info.status for r in recorded] in ([], ["FAILED"], ["KILLED"]), [r.info.status for r in recorded]  # never RUNNING


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_from_its_backup(tmp_path):
    epochs = 8
    args = [*tiny([f"train.epochs={epochs}", "tracking.log_model=false"]), "train.verbose=2"]
    cmd = [sys.executable, "-m", "ranking_exp", *args]
    env = {**os.environ, **QUIET}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 180
        state = None
        while time.time() < deadline and first.poll() is None:
            states = list(tmp_path.glob(".ranking_exp/backups/*/resume.json"))
            backups = list(tmp_path.glob(".ranking_exp/backups/*/backup/chief/checkpoint"))
            if states and backups and json.loads(states[0].read_text()).get("epoch", -1) >= 1:
                state = json.loads(states[0].read_text())
                break
            time.sleep(0.05)
        assert state is not None, "no backup after two epochs"
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    client, recorded = runs(tmp_path)
    assert [r.info.status for r in recorded] == ["RUNNING"]  # SIGKILL leaves it; the rerun takes it over
    killed_id = recorded[0].info.run_id

    time.sleep(1.1)  # a new Hydra run dir (outputs/DATE/TIME) for the second launch
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from the backup at epoch" in second.stderr + second.stdout

    client, recorded = runs(tmp_path)
    assert [(r.info.run_id, r.info.status) for r in recorded] == [(killed_id, "FINISHED")]
    run = recorded[0]
    resumed_at = int(run.data.tags["resumed_at_epoch"])
    assert 1 <= resumed_at < epochs and run.data.tags["attempt"] == "2"  # did not start over
    steps = sorted({m.step for m in client.get_metric_history(killed_id, "val_ndcg_10")})
    assert steps == list(range(epochs))  # one history across both attempts
    assert "test_ndcg_10" in run.data.metrics
    out = Path(run.data.tags["output_dir"])
    assert (out / "export" / "best_model_by_metric" / "saved_model.pb").exists()
    assert (out / "export" / "latest_model" / "saved_model.pb").exists()
    assert not list(tmp_path.glob(".ranking_exp/backups/*"))  # a finished run leaves no backup

