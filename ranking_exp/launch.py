"""``python -m ranking_exp.launch workers=N [ps=M] -- <overrides>``: a distributed run on this machine.

``strategy=multi_worker_mirrored`` (the default): starts N ``python -m ranking_exp
strategy=multi_worker_mirrored <overrides>`` processes, each with a ``TF_CONFIG`` naming the same N
free loopback ports and its own task index. Worker 0 is the chief: it exports, records in MLflow
and writes to the run dir; worker i writes its logs under ``<run dir>/worker-i``.

``strategy=parameter_server`` (``ps=M`` with M >= 1 chooses it): starts M parameter servers and N
workers (``python -m ranking_exp.cluster_task``: TensorFlow servers that only execute what they are
sent) and the coordinator, the ``chief`` task (``python -m ranking_exp strategy=parameter_server
<overrides>``), which trains, exports, records and writes to the run dir. The servers never end by
themselves: they are stopped when the coordinator ends, also when it fails.

A cluster setup can so be tried on one machine before it goes to several (where each host sets its
own TF_CONFIG). Output lines are prefixed with ``[worker i]`` (``[chief]``, ``[ps i]``). When a task
fails the others are stopped and the launcher exits with that task's code after one ``error:`` line.

Launcher settings (before ``--``): ``workers`` (default 2), ``ps`` (default 0), ``host``
(127.0.0.1), ``timeout`` (seconds for the whole run, 0 = none).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time

from ranking_exp.cluster import free_ports

GRACE_SECONDS = 15.0  # for the other workers to notice a failed peer and end by themselves
SETTINGS = ("workers", "ps", "host", "timeout")
USAGE = ("usage: python -m ranking_exp.launch [workers=N] [ps=M] [host=127.0.0.1] [timeout=SECONDS] "
         "-- [overrides...]")


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        own, overrides = argv[:i], argv[i + 1:]
    else:
        own, overrides = [a for a in argv if a.split("=", 1)[0] in SETTINGS], \
            [a for a in argv if a.split("=", 1)[0] not in SETTINGS]
    settings = {"workers": "2", "ps": "0", "host": "127.0.0.1", "timeout": "0"}
    for a in own:
        key, sep, value = a.partition("=")
        if not sep or key not in settings:
            raise SystemExit(f"error: launch: unknown setting {a!r}\n{USAGE}")
        settings[key] = value
    if not settings["workers"].isdigit() or int(settings["workers"]) < 1:
        raise SystemExit(f"error: launch: workers must be a whole number >= 1 (got {settings['workers']!r})")
    if not settings["ps"].isdigit():
        raise SystemExit(f"error: launch: ps must be a whole number >= 0 (got {settings['ps']!r})")
    try:
        float(settings["timeout"])
    except ValueError:
        raise SystemExit(f"error: launch: timeout must be a number of seconds (got {settings['timeout']!r})") from None
    strategy = next((o.split("=", 1)[1] for o in overrides if o.startswith("strategy=")), None)
    ps = int(settings["ps"])
    if ps and strategy not in (None, "parameter_server"):
        raise SystemExit(f"error: launch: ps={ps} is only for strategy=parameter_server (got strategy={strategy})")
    if strategy == "parameter_server" and not ps:
        raise SystemExit("error: launch: strategy=parameter_server needs ps=M >= 1 parameter servers (e.g. ps=1)")
    if strategy not in (None, "multi_worker_mirrored", "parameter_server"):
        raise SystemExit(f"error: launch: strategy={strategy} runs in one process; the launcher runs "
                         "multi_worker_mirrored or parameter_server (run python -m ranking_exp instead)")
    return settings, overrides


def _pump(stream, prefix: str, last_error: list[str]) -> None:
    for line in stream:
        if line.startswith("error:"):
            last_error.append(line.strip())
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


@dataclasses.dataclass
class Task:
    name: str  # "worker 1", "chief", "ps 0"
    proc: subprocess.Popen
    server: bool  # a parameter_server worker/ps: serves until stopped, never ends by itself
    errors: list[str] = dataclasses.field(default_factory=list)
    pump: threading.Thread | None = None


def _start(name: str, cmd: list[str], tf_config: dict, server: bool) -> Task:
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
    if server:  # a server dies with the launcher, whatever kills it (see cluster_task)
        env["RANKING_EXP_LAUNCHER_PID"] = str(os.getpid())
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    task = Task(name, proc, server)
    task.pump = threading.Thread(target=_pump, args=(proc.stdout, f"[{name}] ", task.errors), daemon=True)
    task.pump.start()
    return task


def _threads(overrides: list[str]) -> list[str]:
    """``train.threads=N`` caps the servers' threads too."""
    value = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.threads=")), "")
    return [f"threads={value}"] if value.isdigit() and int(value) > 0 else []


def start_multi_worker(n: int, host: str, overrides: list[str], run_dir: str) -> list[Task]:
    addresses = [f"{host}:{p}" for p in free_ports(n, host)]
    tasks = []
    for i in range(n):
        worker_dir = run_dir if i == 0 else os.path.join(run_dir, f"worker-{i}")
        cmd = [sys.executable, "-m", "ranking_exp", *overrides, f"hydra.run.dir={worker_dir}"]
        tasks.append(_start(f"worker {i}", cmd, {"cluster": {"worker": addresses},
                                                 "task": {"type": "worker", "index": i}}, server=False))
    print(f"launch: {n} workers on {', '.join(addresses)}, run dir {run_dir}", flush=True)
    return tasks


def start_parameter_server(n: int, ps: int, host: str, overrides: list[str], run_dir: str) -> list[Task]:
    ports = [f"{host}:{p}" for p in free_ports(1 + n + ps, host)]
    jobs = {"chief": ports[:1], "worker": ports[1:1 + n], "ps": ports[1 + n:]}
    tasks = []
    server_cmd = [sys.executable, "-m", "ranking_exp.cluster_task", *_threads(overrides)]
    for job in ("ps", "worker"):
        for i in range(len(jobs[job])):
            tasks.append(_start(f"{job} {i}", server_cmd, {"cluster": jobs, "task": {"type": job, "index": i}},
                                server=True))
    cmd = [sys.executable, "-m", "ranking_exp", *overrides, f"hydra.run.dir={run_dir}"]
    tasks.append(_start("chief", cmd, {"cluster": jobs, "task": {"type": "chief", "index": 0}}, server=False))
    print(f"launch: parameter_server cluster: chief (coordinator) on {jobs['chief'][0]}, {n} workers on "
          f"{', '.join(jobs['worker'])}, {ps} ps on {', '.join(jobs['ps'])}; run dir {run_dir}", flush=True)
    return tasks


def stop(tasks: list[Task], grace: float = 0.0) -> None:
    """Tasks that train usually fail by themselves soon after a peer died (and record that);
    after ``grace`` seconds they get SIGINT (MLflow run KILLED), then SIGKILL (TensorFlow blocked
    in a collective operation handles no signal). Servers get SIGTERM at once, then SIGKILL."""
    servers = [t for t in tasks if t.server]
    for t in servers:
        if t.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(t.proc.pid, signal.SIGTERM)
    procs = [t.proc for t in tasks if not t.server]
    for sig, wait in ((None, grace), (signal.SIGINT, 5.0 if grace else 0.0), (signal.SIGKILL, 0.0)):
        alive = [p for p in procs if p.poll() is None]
        if sig is not None:
            for p in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        end = time.monotonic() + wait
        while alive and time.monotonic() < end:
            time.sleep(0.1)
            alive = [p for p in procs if p.poll() is None]
        if not alive:
            break
    end = time.monotonic() + 5.0
    while any(t.proc.poll() is None for t in servers) and time.monotonic() < end:
        time.sleep(0.1)
    for t in servers:
        if t.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(t.proc.pid, signal.SIGKILL)


def _failed(tasks: list[Task]) -> Task | None:
    """The first task that failed: a non-zero exit, or a server that ended (they never end by themselves)."""
    for t in tasks:
        code = t.proc.poll()
        if code not in (None, 0) or (t.server and code is not None):
            return t
    return None


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    settings, overrides = parse(sys.argv[1:] if argv is None else argv)
    n, ps, host, timeout = int(settings["workers"]), int(settings["ps"]), settings["host"], float(settings["timeout"])
    user_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    run_dir = user_dir or os.path.join("outputs", datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    if not any(o.startswith("strategy=") for o in overrides):
        overrides = [f"strategy={'parameter_server' if ps else 'multi_worker_mirrored'}", *overrides]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)  # stop every task when the launcher is stopped
    tasks: list[Task] = []
    try:
        tasks = start_parameter_server(n, ps, host, overrides, run_dir) if ps else \
            start_multi_worker(n, host, overrides, run_dir)
        return _wait(tasks, timeout)
    except KeyboardInterrupt:
        stop(tasks)
        return 130
    finally:
        stop(tasks)  # the servers of a parameter_server run (and anything left)


def _wait(tasks: list[Task], timeout: float) -> int:
    trainers = [t for t in tasks if not t.server]
    deadline = time.monotonic() + timeout if timeout > 0 else None
    failed: Task | None = None
    while True:
        failed = _failed(tasks)
        if failed is not None or all(t.proc.poll() == 0 for t in trainers):
            break
        if deadline is not None and time.monotonic() > deadline:
            stop(tasks)
            for t in tasks:
                t.pump.join(timeout=5)
            what = "the coordinator did" if any(t.server for t in tasks) else "the workers did"
            print(f"error: launch: {what} not finish within timeout={timeout:g} s; stopped them",
                  file=sys.stderr, flush=True)
            return 124
        time.sleep(0.2)
    stop(tasks, grace=GRACE_SECONDS if failed is not None else 0.0)
    for t in tasks:
        t.proc.wait()
    for t in tasks:
        t.pump.join(timeout=5)
    if failed is None:
        return 0
    code = failed.proc.returncode
    if failed.errors:
        reason = failed.errors[-1][len("error:"):].strip()
    elif failed.server and code == 0:
        reason = "it stopped serving (see its output above)"
    else:
        reason = f"exit code {code} (see its output above)"
    print(f"error: launch: {failed.name} failed: {reason}", file=sys.stderr, flush=True)
    if code == 0:
        return 1
    return code if code > 0 else 128 - code  # killed by a signal: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main())
