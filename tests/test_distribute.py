"""Distribution strategies and fault recovery with real processes on 127.0.0.1: a two-worker
multi_worker_mirrored run against a single-worker one, a parameter_server run (1 ps, 2 workers and
the coordinator), bad clusters failing in one line, tpu refusing, and a run killed with SIGKILL
resuming from its backup."""
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


def _random_ndcg_10(data_root: str) -> float:
    """Expected NDCG@10 of random orders of the validation lists (lists without a relevant
    document skipped, as the metric does)."""
    import numpy as np

    from ranking_exp.data.elwc import read_elwc
    from ranking_exp.data.prepared import PreparedData

    data, rng, values = PreparedData.load(data_root), np.random.default_rng(0), []
    for _, _, labels in read_elwc(data.split("vali").files, data.spec):
        gains = 2.0 ** np.maximum(labels, 0) - 1
        discounts = 1 / np.log2(np.arange(2, len(gains) + 2))
        ideal = (np.sort(gains)[::-1][:10] * discounts[:10]).sum()
        if ideal > 0:
            values.append(np.mean([(rng.permutation(gains)[:10] * discounts[:10]).sum() / ideal for _ in range(200)]))
    return float(np.mean(values))


def _port_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_parameter_server_trains_exports_once_and_records_once(tmp_path):
    """1 ps + 2 workers + the coordinator, with variables split in two shards: the coordinator
    alone exports and records, validation is far better than random (a single process reaches
    about 0.90 here, random orders 0.59), and no server is left."""
    overrides = tiny(["scorer=linear", "train.batch_size=8", "optimizer.learning_rate=0.03", "tracking.log_model=false",
                      "strategy.variable_partitioner.kind=fixed_shards", "strategy.variable_partitioner.num_shards=2"])
    proc = run_cli(["workers=2", "ps=1", "timeout=240", "--", *overrides, "hydra.run.dir=ps"], tmp_path,
                   module="ranking_exp.launch", timeout=300, env=QUIET)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    header = proc.stdout.splitlines()[0]
    assert header.startswith("launch: parameter_server cluster: chief (coordinator) on 127.0.0.1:"), header
    for task in ("ps 0", "worker 0", "worker 1"):
        assert f"[{task}] {task.replace(' ', '[')}] serving at 127.0.0.1:" in proc.stdout
    addresses = [a.strip(",;") for a in header.split() if a.startswith("127.0.0.1:")]
    assert len(addresses) == 4 and all(_port_free(a) for a in addresses)  # every server was stopped

    out = tmp_path / "ps"
    exports = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.glob("**/saved_model.pb"))
    assert exports == ["ps/export/best_model_by_metric", "ps/export/latest_model"]  # once, by the coordinator
    client, recorded = runs(tmp_path)
    assert [r.info.status for r in recorded] == ["FINISHED"]
    run = recorded[0]
    assert run.data.params["strategy.kind"] == "parameter_server"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_ndcg_10")) == [0, 1]
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["best_val_ndcg_10"] == pytest.approx(run.data.metrics["best_val_ndcg_10"])
    assert "test_ndcg_10" in metrics
    random = _random_ndcg_10(run.data.tags["data"])
    assert metrics["best_val_ndcg_10"] > random + 0.1, (metrics["best_val_ndcg_10"], random)


def test_the_launcher_stops_the_servers_when_the_coordinator_fails(tmp_path):
    """The coordinator fails while building its model (after connecting to the servers): the
    servers, which never end by themselves, are stopped and the failure is reported in one line."""
    from tests.helpers import REPO

    proc = run_cli(["workers=1", "ps=1", "timeout=100", "--", *tiny([
        "scorer=custom", "scorer.target=tests.plugins.ExplodingScorer"]), "hydra.run.dir=ps"],
        tmp_path, module="ranking_exp.launch", timeout=120, env={**QUIET, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: launch: chief failed: exit code 1 (see its output above)"
    assert "RuntimeError: boom: this scorer always fails" in proc.stdout
    header = proc.stdout.splitlines()[0]
    addresses = [a.strip(",;") for a in header.split() if a.startswith("127.0.0.1:")]
    assert len(addresses) == 3 and all(_port_free(a) for a in addresses), header
    _, recorded = runs(tmp_path)
    assert [r.info.status for r in recorded] == ["FAILED"]


def _ps_cluster(ports, task="chief", jobs=("chief", "worker", "ps")) -> str:
    addresses = iter(f"127.0.0.1:{p}" for p in ports)
    cluster = {job: [next(addresses)] for job in jobs}
    return json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})


@pytest.mark.parametrize("case", ["no_tf_config", "no_ps_job", "no_chief", "strategy_workers", "evaluator"])
def test_bad_parameter_server_clusters_fail_before_tensorflow_in_one_line(tmp_path, case):
    ports = free_ports(4)
    env, overrides = dict(QUIET), ["strategy=parameter_server"]
    expected = {
        "no_tf_config": "error: strategy: strategy=parameter_server needs its cluster in TF_CONFIG",
        "no_ps_job": "error: TF_CONFIG: strategy=parameter_server needs a 'ps' job (the parameter servers",
        "no_chief": "error: TF_CONFIG: strategy=parameter_server needs a 'chief' job (the coordinator",
        "strategy_workers": "error: strategy.workers: strategy=parameter_server takes its cluster from TF_CONFIG",
        "evaluator": "error: TF_CONFIG: job 'evaluator' is not one of chief, worker, ps",
    }[case]
    if case == "no_ps_job":
        env["TF_CONFIG"] = _ps_cluster(ports, jobs=("chief", "worker"))
    elif case == "no_chief":
        env["TF_CONFIG"] = _ps_cluster(ports, task="worker", jobs=("worker", "ps"))
    elif case == "strategy_workers":
        env["TF_CONFIG"] = _ps_cluster(ports)
        overrides.append(_workers(ports[:1]))
    elif case == "evaluator":
        env["TF_CONFIG"] = _ps_cluster(ports, jobs=("chief", "worker", "ps", "evaluator"))
    line = one_error_line(run_cli(tiny(overrides), tmp_path, timeout=60, env=env))
    assert line.startswith(expected), line
    assert not (tmp_path / "outputs").exists()


def test_a_coordinator_whose_servers_never_start_fails_in_one_line(tmp_path):
    ports = free_ports(3)
    started = time.time()
    proc = run_cli(tiny(["strategy=parameter_server", "strategy.connect_timeout=3"]), tmp_path, timeout=120,
                   env={**QUIET, "TF_CONFIG": _ps_cluster(ports)})
    line = one_error_line(proc)
    assert line.startswith(f"error: TF_CONFIG: worker[0] at 127.0.0.1:{ports[1]}, ps[0] at 127.0.0.1:{ports[2]} "
                           "did not come up within 3 s (strategy.connect_timeout)"), line
    assert time.time() - started < 60
    assert runs(tmp_path)[1] == []


@pytest.mark.parametrize("args,message", [
    (["ps=1", "--", "strategy=multi_worker_mirrored"], "error: launch: ps=1 is only for strategy=parameter_server"),
    (["--", "strategy=parameter_server"], "error: launch: strategy=parameter_server needs ps=M >= 1"),
    (["ps=x"], "error: launch: ps must be a whole number >= 0 (got 'x')"),
])
def test_the_launcher_refuses_bad_parameter_server_settings_in_one_line(tmp_path, args, message):
    proc = run_cli(args, tmp_path, module="ranking_exp.launch", timeout=60, env=QUIET)
    assert proc.returncode != 0 and one_error_line(proc).startswith(message)


@pytest.mark.parametrize("task,message", [
    ("chief", "error: TF_CONFIG: this task is the chief (the coordinator)"),
    ("no_ps", "error: TF_CONFIG: strategy=parameter_server needs a 'ps' job"),
])
def test_a_cluster_task_with_a_bad_cluster_fails_in_one_line(tmp_path, task, message):
    ports = free_ports(3)
    tf_config = _ps_cluster(ports) if task == "chief" else _ps_cluster(ports, task="worker", jobs=("chief", "worker"))
    proc = run_cli([], tmp_path, module="ranking_exp.cluster_task", timeout=60, env={**QUIET, "TF_CONFIG": tf_config})
    assert proc.returncode == 2 and one_error_line(proc).startswith(message)


def test_parameter_server_pieces(tmp_path):
    """Epoch steps come from the record count when the data does not know it; batch-level
    callbacks are named before training; strategy.variable_partitioner maps to TF's partitioners."""
    import tensorflow as tf

    from ranking_exp.config import PartitionerConfig
    from ranking_exp.train.strategy import make_partitioner

    shape = tf.TensorShape([1000, 64])  # 256000 bytes of float32
    assert make_partitioner(PartitionerConfig(), num_ps=2) is None
    for cfg, shards in [({"kind": "fixed_shards", "num_shards": 3}, 3),
                        ({"kind": "min_size_max_shards", "min_shard_bytes": 64000}, 2),  # at most one per ps
                        ({"kind": "min_size_max_shards", "min_shard_bytes": 300000, "max_shards": 4}, 1),
                        ({"kind": "max_size", "max_shard_bytes": 64000}, 4),
                        ({"kind": "max_size", "max_shard_bytes": 64000, "max_shards": 3}, 3)]:
        assert make_partitioner(PartitionerConfig(**cfg), num_ps=2)(shape, tf.float32) == [shards, 1], cfg

    from ranking_exp.data.sources import prepare
    from ranking_exp.errors import ConfigError
    from ranking_exp.train.callbacks import StopOnNaN
    from ranking_exp.train.pipeline import _check_epoch_level, count_records
    from tests.helpers import compose_run

    run, _ = compose_run(tmp_path, tiny([]))
    data = prepare(run.dataset)
    for split in ("train", "vali"):
        assert count_records(data.split(split).files) == data.split(split).num_lists > 0
    _check_epoch_level([StopOnNaN(0.1, per_batch=False), tf.keras.callbacks.TensorBoard(update_freq="batch")])
    with pytest.raises(ConfigError, match=r"^callbacks: .*LambdaCallback has batch-level hooks"):
        _check_epoch_level([tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None)])
    with pytest.raises(ConfigError, match=r"StopOnNaN has batch-level hooks"):
        _check_epoch_level([StopOnNaN(0.1)])


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

