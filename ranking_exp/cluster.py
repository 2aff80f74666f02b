"""The cluster of a distributed run, from ``strategy.workers``/``strategy.task_index`` or
``TF_CONFIG``, checked before TensorFlow starts (no TensorFlow import here).

A bad cluster (an index out of range, an empty or duplicated worker list, a task type the
cluster lacks, a port this task cannot bind) is a ConfigError naming the key; a peer that
never comes up is a UserError after ``strategy.connect_timeout`` seconds, never a hang.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time

from ranking_exp.errors import ConfigError, UserError

TF_CONFIG = "TF_CONFIG"


class ClusterUnreachable(UserError):
    """A peer of the cluster did not answer within the connection timeout."""


@dataclasses.dataclass
class Cluster:
    jobs: dict[str, list[str]]  # job name -> addresses, e.g. {"worker": ["h1:2222", "h2:2222"]}
    task_type: str
    task_index: int
    source: str  # "strategy.workers" or "TF_CONFIG": named in error messages

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def num_workers(self) -> int:
        """Workers that train (MultiWorkerMirroredStrategy counts the chief as one)."""
        return len(self.jobs.get("chief", [])) + len(self.jobs.get("worker", []))

    @property
    def is_chief(self) -> bool:
        """The task that exports and records: ``chief``, or worker 0 when there is no chief."""
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    def peers(self) -> list[tuple[str, str]]:
        """(name, address) of every other task."""
        return [(f"{job}[{i}]", addr) for job, addrs in self.jobs.items() for i, addr in enumerate(addrs)
                if (job, i) != (self.task_type, self.task_index)]

    def tf_config(self) -> str:
        return json.dumps({"cluster": self.jobs, "task": {"type": self.task_type, "index": self.task_index}})


def split_address(address: str, key: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {address!r} is not an address like 'host:port'")
    return host.strip("[]"), int(port)


def _check_jobs(jobs: dict[str, list[str]], source: str, allowed: tuple[str, ...]) -> None:
    for job, addrs in jobs.items():
        if job not in allowed:
            raise ConfigError(f"{source}: job {job!r} is not one of {', '.join(allowed)}")
        if not isinstance(addrs, list) or not addrs:
            raise ConfigError(f"{source}: job {job!r} needs a non-empty list of 'host:port' addresses")
        for i, a in enumerate(addrs):
            split_address(a, f"{source} {job}[{i}]")
    seen: dict[str, str] = {}
    for job, addrs in jobs.items():
        for i, a in enumerate(addrs):
            if a in seen:
                raise ConfigError(f"{source}: {a} is listed twice ({seen[a]} and {job}[{i}])")
            seen[a] = f"{job}[{i}]"
    if len(jobs.get("chief", [])) > 1:
        raise ConfigError(f"{source}: a cluster has at most one chief (got {len(jobs['chief'])})")


def from_config(workers: list[str] | None, task_index: int, *, allowed: tuple[str, ...] = ("chief", "worker"),
                environ: dict[str, str] | None = None) -> Cluster | None:
    """The cluster from ``strategy.workers`` (worker 0 is the chief) or else ``TF_CONFIG``;
    None when neither is given (a single worker with its local devices)."""
    environ = os.environ if environ is None else environ
    if workers:
        jobs = {"worker": [str(w) for w in workers]}
        _check_jobs(jobs, "strategy.workers", allowed)
        if not 0 <= task_index < len(workers):
            raise ConfigError(f"strategy.task_index: {task_index} is out of range for "
                              f"{len(workers)} strategy.workers (0..{len(workers) - 1})")
        return Cluster(jobs, "worker", task_index, "strategy.workers")
    raw = environ.get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict) or not tf_config["cluster"]:
        raise ConfigError('TF_CONFIG: needs a "cluster" like {"worker": ["host:port", ...]}')
    task = tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise ConfigError('TF_CONFIG: needs a "task" like {"type": "worker", "index": 0}')
    jobs = tf_config["cluster"]
    _check_jobs(jobs, "TF_CONFIG", allowed)
    task_type, index = str(task["type"]), task.get("index", 0)
    if task_type not in jobs:
        raise ConfigError(f"TF_CONFIG: task type {task_type!r} has no entry in the cluster "
                          f"(cluster has {', '.join(jobs)})")
    if not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise ConfigError(f"TF_CONFIG: task index {index} is out of range for {len(jobs[task_type])} "
                          f"{task_type} address(es) (0..{len(jobs[task_type]) - 1})")
    return Cluster(jobs, task_type, index, "TF_CONFIG")


PS_JOBS = ("chief", "worker", "ps")  # a parameter-server cluster: coordinator, workers, parameter servers
_PS_ROLES = {"chief": "the coordinator, which runs model.fit", "worker": "the tasks that run training steps",
             "ps": "the parameter servers, which hold the variables"}


def parameter_server_cluster(environ: dict[str, str] | None = None) -> Cluster:
    """The cluster of ``strategy=parameter_server`` from ``TF_CONFIG``: one ``chief`` (the
    coordinator), at least one ``worker`` and one ``ps``; a ConfigError naming what is missing."""
    cluster = from_config(None, 0, allowed=PS_JOBS, environ=environ)
    if cluster is None:
        raise ConfigError("strategy: strategy=parameter_server needs its cluster in TF_CONFIG (a chief, workers and "
                          "ps tasks); `python -m ranking_exp.launch workers=2 ps=1 -- ...` runs one on this machine")
    missing = [f"a {job!r} job ({role})" for job, role in _PS_ROLES.items() if job not in cluster.jobs]
    if missing:
        raise ConfigError(f"TF_CONFIG: strategy=parameter_server needs {' and '.join(missing)}; the cluster has "
                          f"only {', '.join(cluster.jobs)}")
    return cluster


def check_port_free(cluster: Cluster) -> None:
    """This task's own port must be free: TensorFlow's server binds it (and would otherwise fail
    or hang deep inside gRPC)."""
    host, port = split_address(cluster.address, cluster.source)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"{cluster.source}: {cluster.task_type}[{cluster.task_index}] cannot listen on "
                              f"{cluster.address}: port {port} is already in use or not local ({e.strerror})") from None


def wait_for_peers(cluster: Cluster, timeout: float) -> None:
    """Waits until every other task accepts connections; ClusterUnreachable after ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = cluster.peers()
    while pending:
        still = []
        for name, addr in pending:
            host, port = split_address(addr, cluster.source)
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    pass
            except OSError:
                still.append((name, addr))
        pending = still
        if pending and time.monotonic() > deadline:
            names = ", ".join(f"{n} at {a}" for n, a in pending)
            raise ClusterUnreachable(f"{cluster.source}: {names} did not come up within {timeout:g} s "
                                     f"(strategy.connect_timeout); is every task started with the same cluster?")
        if pending:
            time.sleep(0.2)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class ConnectWatchdog:
    """Ends this process with one ``error:`` line if the cluster is not formed within ``timeout``.

    TensorFlow waits for every peer inside MultiWorkerMirroredStrategy's constructor, forever,
    holding the GIL and ignoring SIGTERM: no thread or signal handler of ours can run then, so
    the watchdog is a small separate process (no TensorFlow), told through a pipe when we are done.
    """

    def __init__(self, cluster: Cluster, timeout: float):
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from ranking_exp.cluster import _watch; _watch()", str(os.getpid()),
             str(timeout), json.dumps(dataclasses.asdict(cluster))],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def done(self) -> None:
        try:
            self._proc.stdin.close()  # EOF: the watchdog exits quietly
        finally:
            self._proc.wait(timeout=10)


def _watch() -> None:
    import select
    import signal
    import sys

    parent, timeout, cluster = int(sys.argv[1]), float(sys.argv[2]), Cluster(**json.loads(sys.argv[3]))
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if ready:  # EOF or data: the cluster formed (or the parent died)
        return
    missing = []
    for name, addr in cluster.peers():
        host, port = split_address(addr, cluster.source)
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError:
            missing.append(f"{name} at {addr}")
    who = ", ".join(missing) if missing else "the other tasks (they answer but did not join)"
    print(f"error: {cluster.source}: {cluster.task_type}[{cluster.task_index}] could not form the cluster within "
          f"{timeout:g} s (strategy.connect_timeout): {who} did not come up; is every task started with the same "
          "cluster?", file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
