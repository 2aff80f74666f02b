"""``python -m ranking_exp.serve model=... [host=127.0.0.1] [port=8501]``: serve a ranker over HTTP.

``model`` is an export directory or an MLflow model URI (``runs:/ID/model``,
``models:/NAME@ALIAS``). Start-up problems (no such model, not a ranking export, a bad MLflow
URI, the port in use, a bad setting) print one line ``error: ...`` and exit with code 2.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile

from omegaconf import DictConfig, OmegaConf

from ranking_exp.cli import check_structured, run_hydra_app
from ranking_exp.errors import ConfigError
from ranking_exp.serve.config import ServeConfig

log = logging.getLogger("ranking_exp.serve")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), or ConfigError naming the problem."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"host: cannot resolve {host!r} ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then
    # (without it, Nagle's algorithm and delayed ACKs add 40 ms to every response).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def serve(c: ServeConfig, launch_dir: str) -> None:
    import uvicorn

    from ranking_exp.predict import resolve_model
    from ranking_exp.serve.app import create_app
    from ranking_exp.serve.model import ServedModel, default_name, describe_source

    with tempfile.TemporaryDirectory(prefix="ranking_exp_serve_") as work:
        model_dir = resolve_model(c.model, c.tracking_uri, work)
        sock = bind(c.host, c.port)
        try:
            source = describe_source(c.model, model_dir, c.tracking_uri, launch_dir)
            name = c.name or default_name(c.model, source, model_dir)
            model = ServedModel(model_dir, name, source)
            model.warm_up(c.batching.max_batch_size, c.max_documents)
            app = create_app(model, max_documents=c.max_documents, max_queries=c.max_queries,
                             max_body_bytes=c.max_body_bytes, max_batch_size=c.batching.max_batch_size,
                             max_wait_ms=c.batching.max_wait_ms, workers=c.batching.workers,
                             inline_max_documents=c.batching.inline_max_documents)
            host, port = sock.getsockname()[:2]
            print(f"serving model {name!r} (version {model.version}, warmed up in {model.warmup_seconds:.2f} s) "
                  f"on http://{host}:{port}  POST /v1/rank, POST /v1/models/{name}:predict", flush=True)
            config = uvicorn.Config(app, log_level=c.log_level, access_log=c.access_log, lifespan="on",
                                    timeout_graceful_shutdown=10)
            server = uvicorn.Server(config)
            server.run(sockets=[sock])
            if not server.started:  # uvicorn logged why (e.g. the lifespan failed)
                raise SystemExit(1)
        finally:
            sock.close()


def _serve_task(cfg: DictConfig) -> None:
    from hydra.utils import get_original_cwd

    c: ServeConfig = OmegaConf.to_object(cfg)
    try:
        launch_dir = get_original_cwd()
    except ValueError:
        launch_dir = os.getcwd()
    serve(c, launch_dir)


def main() -> None:
    run_hydra_app(_serve_task, "serve", check=check_structured)


if __name__ == "__main__":
    sys.exit(main())
