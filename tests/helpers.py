"""Test helpers: compose a real run config into tmp_path and run it in-process or as a CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

from ranking_exp.config import RunConfig, register_configs, to_run_config

REPO = Path(__file__).resolve().parents[1]

# A small, fast synthetic run: still learnable, seconds per epoch.
TINY = [
    "dataset.num_train=120", "dataset.num_vali=40", "dataset.num_test=40", "dataset.max_docs=20",
    "train.epochs=2", "train.verbose=0",
]


# Runs that train and evaluate, without the extras (exports but the last, logs, backups).
QUICK = ["tracking.log_model=false", "export.best=false", "callbacks.tensorboard.enabled=false",
         "callbacks.checkpoint.enabled=false", "train.resume=false"]


def tiny(overrides: list[str]) -> list[str]:
    """TINY plus a small DNN unless another scorer is chosen, then ``overrides``."""
    other_scorer = any(o.startswith("scorer=") and o != "scorer=dnn" for o in overrides)
    other_data = any(o.startswith("dataset=") and o != "dataset=synthetic" for o in overrides)
    base = [o for o in TINY if not (other_data and o.startswith("dataset."))]
    return [*base, *([] if other_scorer else ["scorer.hidden_layer_dims=[16,8]"]), *overrides]


def compose_run(tmp_path: Path, overrides: list[str]) -> tuple[RunConfig, DictConfig]:
    """The composed config as the CLI would build it, writing only under ``tmp_path``."""
    register_configs()
    overrides = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides]
    with initialize_config_module("ranking_exp.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return to_run_config(cfg), cfg


def run_cli(args: list[str], cwd: Path, module: str = "ranking_exp", timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> args`` in ``cwd`` (the data cache is the session's, see conftest)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def load_benchmark(script: Path):
    """A ``benchmarks/`` script imported as a module (they are scripts, not a package), to test its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{script.stem}_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
