"""The ``optimizer`` group: a Keras optimizer and its learning-rate schedule."""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ranking_exp.config import OptimizerConfig, ScheduleConfig
from ranking_exp.errors import ConfigError


class LinearWarmup(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 over ``warmup_steps``, then ``after``."""

    def __init__(self, peak: float, warmup_steps: int, after):
        self.peak, self.warmup_steps, self.after = peak, warmup_steps, after

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / float(max(self.warmup_steps, 1))
        return tf.where(step < self.warmup_steps, warm, self.after(step - self.warmup_steps))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "after": tf.keras.optimizers.schedules.serialize(self.after)}


def decay_steps(s: ScheduleConfig, run_steps: int | None) -> int:
    """``s.decay_steps``, with ``auto`` resolved to the run's steps after the warm-up."""
    if s.decay_steps != "auto":
        return s.decay_steps
    if run_steps is None:
        raise ConfigError("optimizer.schedule.decay_steps: auto needs the run's number of steps (run_steps): set a number")
    warmup = s.warmup_steps if s.kind == "linear_warmup_cosine" else 0
    return max(1, run_steps - warmup)


def learning_rate(lr: float, s: ScheduleConfig, run_steps: int | None = None):
    """The learning rate or schedule; ``run_steps``: the run's training steps (for ``decay_steps=auto``)."""
    sched = tf.keras.optimizers.schedules
    if s.kind == "constant":
        return lr
    s = dataclasses.replace(s, decay_steps=decay_steps(s, run_steps))
    if s.kind == "exponential":
        return sched.ExponentialDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)
    if s.kind == "cosine":
        return sched.CosineDecay(lr, s.decay_steps, alpha=s.alpha)
    if s.kind == "cosine_restarts":
        return sched.CosineDecayRestarts(lr, s.decay_steps, alpha=s.alpha)
    # linear_warmup_cosine
    return LinearWarmup(lr, s.warmup_steps, sched.CosineDecay(lr, s.decay_steps, alpha=s.alpha))


def build_optimizer(cfg: OptimizerConfig, run_steps: int | None = None):
    """The configured Keras optimizer: a ``tf.keras.optimizers.legacy`` one (fused per-variable
    update kernels) when ``optimizer.fused``, else the new ``tf.keras.optimizers`` one."""
    lr = learning_rate(cfg.learning_rate, cfg.schedule, run_steps)
    common = {"learning_rate": lr, "clipnorm": cfg.clipnorm}
    kinds = tf.keras.optimizers.legacy if cfg.fused else tf.keras.optimizers
    if cfg.name == "adam":
        return kinds.Adam(beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **common)
    if cfg.name == "adagrad":
        return kinds.Adagrad(initial_accumulator_value=cfg.initial_accumulator_value, epsilon=cfg.epsilon, **common)
    return kinds.SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, **common)


def build_slots(optimizer, variables) -> None:
    """The optimizer's slot variables now, as its first step would make them: a first call that
    creates variables makes ``tf.function`` trace the whole training step twice."""
    if isinstance(optimizer, tf.keras.optimizers.Optimizer):
        optimizer.build(variables)
    elif isinstance(optimizer, tf.keras.optimizers.legacy.Optimizer):
        optimizer._create_all_weights(variables)  # what its apply_gradients does on first use
