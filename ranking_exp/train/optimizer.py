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


def decays(variable) -> bool:
    """Whether decoupled weight decay applies to ``variable``: weight matrices and kernels (rank 2
    and up) do; biases and batch-norm scales and offsets (rank 1) do not, as AdamW is used in practice
    (Loshchilov & Hutter 2019; timm's and nanoGPT's no-decay group)."""
    return variable.shape.rank is None or variable.shape.rank >= 2


class _MatricesOnly:
    """Keras's own decoupled weight decay (the new optimizers' ``weight_decay``) on matrices only."""

    def _use_weight_decay(self, variable):
        return decays(variable) and super()._use_weight_decay(variable)


class _LegacyDecoupledDecay:
    """Decoupled weight decay for the fused ``tf.keras.optimizers.legacy`` optimizers, which have none:
    before each variable's fused update, ``w -= lr_t * weight_decay * w``, exactly what the new
    optimizers' ``weight_decay`` does (same step's learning rate, applied before the gradient step)."""

    def __init__(self, *args, weight_decay: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_decay = weight_decay

    def _decay_first(self, var):
        """A context whose ops run after ``var``'s decay (none for a variable that does not decay)."""
        if not decays(var):
            return tf.control_dependencies([])
        lr = self._decayed_lr(var.dtype.base_dtype)
        decay = var.assign_sub(var * lr * tf.cast(self.weight_decay, var.dtype.base_dtype), read_value=False)
        return tf.control_dependencies([decay])

    def _resource_apply_dense(self, grad, var, apply_state=None):
        with self._decay_first(var):
            return super()._resource_apply_dense(grad, var, apply_state)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        with self._decay_first(var):
            return super()._resource_apply_sparse(grad, var, indices, apply_state)

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.weight_decay}


_KINDS = {True: tf.keras.optimizers.legacy, False: tf.keras.optimizers}  # by optimizer.fused
_NAMES = {"adam": "Adam", "adagrad": "Adagrad", "sgd": "SGD"}
_PLAIN = {(fused, name): getattr(kinds, cls) for fused, kinds in _KINDS.items() for name, cls in _NAMES.items()}
_DECAYED = {(fused, name): type(f"{cls.__name__}W", (_LegacyDecoupledDecay if fused else _MatricesOnly, cls), {})
            for (fused, name), cls in _PLAIN.items()}  # AdamW, AdagradW, SGDW of either kind


def build_optimizer(cfg: OptimizerConfig, run_steps: int | None = None):
    """The configured Keras optimizer: a ``tf.keras.optimizers.legacy`` one (fused per-variable
    update kernels) when ``optimizer.fused``, else the new ``tf.keras.optimizers`` one; with
    ``optimizer.weight_decay`` > 0, the same optimizer with decoupled weight decay on its matrices
    (AdamW, SGDW, ...), either kind. Without it, the plain Keras class, unchanged."""
    kwargs = {"learning_rate": learning_rate(cfg.learning_rate, cfg.schedule, run_steps), "clipnorm": cfg.clipnorm}
    if cfg.weight_decay:
        kwargs["weight_decay"] = cfg.weight_decay
    if cfg.name == "adam":
        kwargs.update(beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon)
    elif cfg.name == "adagrad":
        kwargs.update(initial_accumulator_value=cfg.initial_accumulator_value, epsilon=cfg.epsilon)
    else:
        kwargs.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
    return (_DECAYED if cfg.weight_decay else _PLAIN)[cfg.fused, cfg.name](**kwargs)


def build_slots(optimizer, variables) -> None:
    """The optimizer's slot variables now, as its first step would make them: a first call that
    creates variables makes ``tf.function`` trace the whole training step twice."""
    if isinstance(optimizer, tf.keras.optimizers.Optimizer):
        optimizer.build(variables)
    elif isinstance(optimizer, tf.keras.optimizers.legacy.Optimizer):
        optimizer._create_all_weights(variables)  # what its apply_gradients does on first use
