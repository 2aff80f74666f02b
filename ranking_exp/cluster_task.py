"""``python -m ranking_exp.cluster_task [threads=N]``: this host's ``worker`` or ``ps`` task of a
``strategy=parameter_server`` cluster, from ``TF_CONFIG``.

It only runs TensorFlow's server (``tf.distribute.Server(...).join()``): the coordinator (the
``chief`` task, ``python -m ranking_exp strategy=parameter_server ...``) sends it training steps
and variables. It never ends by itself; stop it when the coordinator is done (``ranking_exp.launch``
does). The training command itself does the same on a worker or ps host, so either can be used.
"""
from __future__ import annotations

import os
import sys

from ranking_exp.errors import UserError

USAGE = "usage: TF_CONFIG='{...}' python -m ranking_exp.cluster_task [threads=N]"


def die_with_launcher() -> None:
    """Started by ``ranking_exp.launch``: end when the launcher ends, however it ends (even
    SIGKILL), so that no server is left serving forever (Linux; elsewhere the launcher's own
    clean-up is all)."""
    parent = os.environ.get("RANKING_EXP_LAUNCHER_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the launcher ended before prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    threads = None
    for a in argv:
        key, sep, value = a.partition("=")
        if key != "threads" or not sep or not value.isdigit() or int(value) < 1:
            print(f"error: cluster_task: unknown or bad setting {a!r}\n{USAGE}", file=sys.stderr)
            return 2
        threads = int(value)
    die_with_launcher()
    from ranking_exp.cluster import parameter_server_cluster

    try:
        cluster = parameter_server_cluster()
        if cluster.task_type == "chief":
            raise UserError("TF_CONFIG: this task is the chief (the coordinator): run "
                            "`python -m ranking_exp strategy=parameter_server ...` there instead")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ranking_exp.train.strategy import serve_forever

        serve_forever(cluster, threads)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
