"""``python -m ranking_exp.launch workers=N -- <overrides>``: a multi-worker run on this machine.

Starts N ``python -m ranking_exp strategy=multi_worker_mirrored <overrides>`` processes, each with
a ``TF_CONFIG`` naming the same N free loopback ports and its own task index, so a cluster setup
can be tried on one machine before it goes to several (where each host sets its own TF_CONFIG).
Worker 0 is the chief: it exports, records in MLflow and writes to the run dir; worker i writes
its logs under ``<run dir>/worker-i``. Output lines are prefixed with ``[worker i]``. When one
worker fails the others are stopped and the launcher exits with that worker's code after one
``error:`` line.

Launcher settings (before ``--``): ``workers`` (default 2), ``host`` (127.0.0.1),
``timeout`` (seconds for the whole run, 0 = none).
"""
from __future__ import annotations

import contextlib
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
USAGE = "usage: python -m ranking_exp.launch [workers=N] [host=127.0.0.1] [timeout=SECONDS] -- [overrides...]"


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        own, overrides = argv[:i], argv[i + 1:]
    else:
        own, overrides = [a for a in argv if a.split("=", 1)[0] in ("workers", "host", "timeout")], \
            [a for a in argv if a.split("=", 1)[0] not in ("workers", "host", "timeout")]
    settings = {"workers": "2", "host": "127.0.0.1", "timeout": "0"}
    for a in own:
        key, sep, value = a.partition("=")
        if not sep or key not in settings:
            raise SystemExit(f"error: launch: unknown setting {a!r}\n{USAGE}")
        settings[key] = value
    if not settings["workers"].isdigit() or int(settings["workers"]) < 1:
        raise SystemExit(f"error: launch: workers must be a whole number >= 1 (got {settings['workers']!r})")
    try:
        float(settings["timeout"])
    except ValueError:
        raise SystemExit(f"error: launch: timeout must be a number of seconds (got {settings['timeout']!r})") from None
    return settings, overrides


def _pump(stream, prefix: str, last_error: list[str]) -> None:
    for line in stream:
        if line.startswith("error:"):
            last_error.append(line.strip())
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    settings, overrides = parse(sys.argv[1:] if argv is None else argv)
    n, host, timeout = int(settings["workers"]), settings["host"], float(settings["timeout"])
    user_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    run_dir = user_dir or os.path.join("outputs", datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    if not any(o.startswith("strategy=") for o in overrides):
        overrides = ["strategy=multi_worker_mirrored", *overrides]
    addresses = [f"{host}:{p}" for p in free_ports(n, host)]
    procs: list[subprocess.Popen] = []
    errors: list[list[str]] = []
    pumps = []
    for i in range(n):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                                      "task": {"type": "worker", "index": i}})}
        worker_dir = run_dir if i == 0 else os.path.join(run_dir, f"worker-{i}")
        cmd = [sys.executable, "-m", "ranking_exp", *overrides, f"hydra.run.dir={worker_dir}"]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        procs.append(p)
        errors.append([])
        t = threading.Thread(target=_pump, args=(p.stdout, f"[worker {i}] ", errors[i]), daemon=True)
        t.start()
        pumps.append(t)
    print(f"launch: {n} workers on {', '.join(addresses)}, run dir {run_dir}", flush=True)

    def stop_all(grace: float = 0.0) -> None:
        """The others usually fail by themselves soon after a peer died (and record that); after
        ``grace`` seconds they get SIGINT (MLflow run KILLED), then SIGKILL (TensorFlow blocked in a
        collective operation handles no signal)."""
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
                return

    deadline = time.monotonic() + timeout if timeout > 0 else None
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                stop_all()
                for t in pumps:
                    t.join(timeout=5)
                print(f"error: launch: the workers did not finish within timeout={timeout:g} s; stopped them",
                      file=sys.stderr, flush=True)
                return 124
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_all()
        return 130
    if failed is not None:
        stop_all(grace=GRACE_SECONDS)
    for p in procs:
        p.wait()
    for t in pumps:
        t.join(timeout=5)
    if failed is not None:
        i, code = failed
        reason = errors[i][-1][len("error:"):].strip() if errors[i] else f"exit code {code} (see its output above)"
        print(f"error: launch: worker {i} failed: {reason}", file=sys.stderr, flush=True)
        return code if code > 0 else 128 - code  # killed by a signal: the shell's 128 + N
    return 0


if __name__ == "__main__":
    sys.exit(main())
