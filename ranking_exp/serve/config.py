"""``ServeConfig``: the validated structured config of ``python -m ranking_exp.serve`` (conf/serve.yaml)."""
from __future__ import annotations

import dataclasses
import re

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ranking_exp.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclasses.dataclass
class BatchingConfig:
    # Concurrent requests are collected into one call of the model, up to this many queries ...
    max_batch_size: int = 32
    # ... or until this much time has passed since the first one arrived (0: take only what is
    # already waiting; requests still batch up while the model is busy).
    max_wait_ms: float = 0.0
    # Model calls that may run at the same time.
    workers: int = 1
    # Batches of at most this many (padded) documents are scored on the event loop's thread (cheaper
    # than a hand-off to a worker thread); larger ones in a worker thread. 0: always a worker thread.
    inline_max_documents: int = 4096

    def __post_init__(self):
        if self.max_batch_size <= 0:
            raise ConfigError("batching.max_batch_size: must be > 0")
        if self.max_wait_ms < 0:
            raise ConfigError("batching.max_wait_ms: must be >= 0")
        if self.workers <= 0:
            raise ConfigError("batching.workers: must be > 0")
        if self.inline_max_documents < 0:
            raise ConfigError("batching.inline_max_documents: must be >= 0")


@dataclasses.dataclass
class ServeConfig:
    model: str = MISSING
    host: str = "127.0.0.1"
    port: int = 8501
    name: str | None = None
    tracking_uri: str = "sqlite:///mlflow.db"
    max_documents: int = 1000
    max_queries: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    access_log: bool = False
    log_level: str = "info"
    batching: BatchingConfig = dataclasses.field(default_factory=BatchingConfig)

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be in 0..65535 (got {self.port})")
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise ConfigError(f"name: {self.name!r}: use letters, digits, '.', '_' or '-'")
        for key in ("max_documents", "max_queries", "max_body_bytes"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0")
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if self.log_level not in levels:
            raise ConfigError(f"log_level: {self.log_level!r} not in {levels}")


ConfigStore.instance().store(name="serve_schema", node=ServeConfig)
