"""Resumable training: where a run's backup lives and what a restarted run needs to continue.

A run's *resume directory* is ``train.backup_dir``, or by default
``<launch dir>/.ranking_exp/backups/<hash of the composed config>``: Hydra gives every launch a
new run dir, so the directory is derived from the command instead, and running the same command
again finds it. It holds

- ``backup/``: Keras ``BackupAndRestore`` state after every epoch (weights, optimizer, epoch);
- ``best_checkpoint/``: the best epoch's weights so far (copied to the run dir at the end);
- ``resume.json``: the MLflow run to continue, the best validation value, the last run dir.

Keras deletes ``backup/`` when training ends normally and we delete the whole directory once the
run is recorded, so a finished command starts afresh next time; a killed or failed one resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ranking_exp.config import RunConfig

STATE_FILE = "resume.json"
# Keys that differ between launches of "the same command" (or between the workers of one run).
_NOT_HASHED = ("output_dir", "strategy.workers", "strategy.task_index", "train.verbose")


def config_hash(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=False)
    for key in _NOT_HASHED:
        node, *rest = key.split(".")
        if rest and isinstance(data.get(node), dict):
            data[node].pop(rest[0], None)
        elif not rest:
            data.pop(node, None)
    try:
        data = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except Exception:  # an interpolation only Hydra can resolve: hash the unresolved text
        pass
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class ResumeDir:
    root: Path

    @classmethod
    def for_run(cls, run: RunConfig, cfg: DictConfig, launch_dir: str) -> ResumeDir | None:
        if not run.train.resume:
            return None
        if run.train.backup_dir:
            return cls(Path(launch_dir, os.path.expanduser(run.train.backup_dir)).resolve())
        return cls(Path(launch_dir, ".ranking_exp", "backups", config_hash(cfg)).resolve())

    @property
    def backup_dir(self) -> str:
        return str(self.root / "backup")

    @property
    def best_dir(self) -> str:
        return str(self.root / "best_checkpoint")

    def has_backup(self) -> bool:
        """A backup Keras can restore (it writes the chief's under ``backup/chief``)."""
        return (self.root / "backup" / "chief" / "checkpoint").exists()

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def update(self, **values: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {**self.state(), **values}
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.root / STATE_FILE)

    def clear_stale(self) -> None:
        """No restorable backup: start afresh (keep resume.json, which names the earlier MLflow run)."""
        for sub in ("backup", "best_checkpoint"):
            shutil.rmtree(self.root / sub, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def make_state_callback(resume: ResumeDir, monitor: str):
    """A Keras callback recording the best ``monitor`` value after every epoch (chief only)."""
    import math

    import tensorflow as tf

    class ResumeStateWriter(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            best = resume.state().get("best")
            self.best = -math.inf if best is None else float(best)

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is not None and math.isfinite(float(value)) and float(value) > self.best:
                self.best = float(value)
            resume.update(best=None if self.best == -math.inf else self.best, epoch=epoch)

    return ResumeStateWriter()
