"""The ``strategy`` group: which ``tf.distribute`` strategy a run trains under."""
from __future__ import annotations

import tensorflow as tf

from ranking_exp.config import StrategyConfig
from ranking_exp.errors import ConfigError


def make_strategy(cfg: StrategyConfig) -> tf.distribute.Strategy | None:
    """None means TensorFlow's default (no distribution)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "mirrored":
        # All local GPUs when present, else the CPU.
        return tf.distribute.MirroredStrategy(devices=list(cfg.devices) if cfg.devices else None)
    raise ConfigError(f"strategy: strategy={cfg.kind} is not supported yet (use none or mirrored)")
