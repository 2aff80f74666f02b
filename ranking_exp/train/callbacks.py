"""Bookkeeping callbacks from the ``callbacks`` config: TensorBoard, checkpoints, early
stopping, learning-rate reduction. All watch ``val_<metrics.monitor>`` (higher is better)."""
from __future__ import annotations

import math
import os
import time

import tensorflow as tf
from hydra.utils import instantiate

from ranking_exp.config import RunConfig
from ranking_exp.errors import TrainingDiverged

BEST_CHECKPOINT_DIR = "best_checkpoint"  # where TF Ranking's pipeline looks for the best weights


class StopOnNaN(tf.keras.callbacks.Callback):
    """Ends training at the first non-finite training loss with a clear error (Keras'
    TerminateOnNaN stops quietly and leaves NaN weights to be exported).

    ``per_batch=False`` (what runs use) checks once per epoch the loss Keras averages over the
    epoch's batches (a NaN or inf in any batch makes it non-finite): when the epoch's training
    steps end, before validation, so the steps never wait for the loss to be read back and the
    diverged epoch reaches no checkpoint, backup or record; at the end of the epoch instead
    where the running loss is not read directly (multi-worker and parameter-server strategies).
    ``per_batch=True`` checks after every batch (Keras then calls batch hooks, which
    ParameterServerStrategy refuses, and runs one step per execution under
    ``train.steps_per_execution=auto``)."""

    def __init__(self, learning_rate: float, per_batch: bool = True):
        super().__init__()
        self.learning_rate = learning_rate
        self.per_batch = per_batch
        self._epoch = None  # the epoch whose training steps are running (not yet checked)

    def _check(self, loss, where: str) -> None:
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(f"training diverged: loss is {float(loss)} at {where} "
                                   f"(try a lower optimizer.learning_rate than {self.learning_rate})")

    def on_train_batch_end(self, batch, logs=None):
        if self.per_batch:
            self._check((logs or {}).get("loss"), f"batch {batch}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_test_begin(self, logs=None):  # validation starts: the epoch's training steps are over
        if self.per_batch or self._epoch is None:
            return
        if isinstance(self.model.distribute_strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                                                       tf.distribute.experimental.ParameterServerStrategy)):
            return  # reading the loss there is a collective or remote operation: at the epoch's end
        loss = next((m for m in self.model.metrics if m.name == "loss"), None)
        if loss is not None:
            epoch, self._epoch = self._epoch, None
            self._check(loss.result(), f"epoch {epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if not self.per_batch and self._epoch is not None:
            self._epoch = None
            self._check((logs or {}).get("loss"), f"epoch {epoch + 1}")

    def _implements_train_batch_hooks(self):  # Keras calls (and, under ParameterServerStrategy, refuses) batch hooks
        return self.per_batch


class BestWeights(tf.keras.callbacks.Callback):
    """Keeps the weights of the best epoch in memory: the best export of a multi-worker task that
    cannot read the chief's best checkpoint (every worker sees the same validation metrics)."""

    def __init__(self, monitor: str, initial_best: float | None = None):
        super().__init__()
        self.monitor = monitor
        self.best = -math.inf if initial_best is None else initial_best
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            self.weights = self.model.get_weights()


class Throughput(tf.keras.callbacks.Callback):
    """Adds ``train_seconds_epoch`` (the training loop of the epoch, validation excluded) and
    ``train_docs_per_sec`` (real, non-padding documents trained per second) to each epoch's
    logs, so MLflow records the speed of every run beside its metrics. ``docs_per_epoch``:
    None when unknown (lists cut to ``train.list_size``): only the seconds are logged."""

    def __init__(self, docs_per_epoch: int | None):
        super().__init__()
        self.docs_per_epoch = docs_per_epoch
        self._start = self._seconds = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._seconds = time.perf_counter(), None

    def on_test_begin(self, logs=None):  # validation starts: the training loop is over
        if self._start is not None and self._seconds is None:
            self._seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self._start is None:
            return
        seconds = self._seconds if self._seconds is not None else time.perf_counter() - self._start
        logs["train_seconds_epoch"] = seconds
        if self.docs_per_epoch and seconds > 0:
            logs["train_docs_per_sec"] = self.docs_per_epoch / seconds


class EpochsRun(tf.keras.callbacks.Callback):
    """The first epoch this process trained (> 0 after a restore) and how many it trained."""

    def __init__(self):
        super().__init__()
        self.first_epoch: int | None = None
        self.count = 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.count += 1


def build_callbacks(run: RunConfig, model_dir: str, best_dir: str | None = None,
                    initial_best: float | None = None) -> list[tf.keras.callbacks.Callback]:
    """``best_dir``: where the best checkpoint goes (default ``<model_dir>/best_checkpoint``);
    ``initial_best``: the best validation value before a restore (only better epochs replace it)."""
    c = run.callbacks
    monitor = f"val_{run.metrics.monitor}"
    out: list[tf.keras.callbacks.Callback] = []
    if c.tensorboard.enabled:
        out.append(tf.keras.callbacks.TensorBoard(
            os.path.join(model_dir, "tensorboard"), histogram_freq=c.tensorboard.histogram_freq,
            update_freq=c.tensorboard.update_freq, profile_batch=0))
    if c.checkpoint.enabled:
        out.append(tf.keras.callbacks.ModelCheckpoint(
            os.path.join(model_dir, "checkpoints", "last"), save_weights_only=True))
    if run.export.best:
        out.append(tf.keras.callbacks.ModelCheckpoint(
            os.path.join(best_dir or os.path.join(model_dir, BEST_CHECKPOINT_DIR), "ckpt-{epoch:04d}"),
            monitor=monitor, mode="max", save_weights_only=True, save_best_only=True,
            initial_value_threshold=initial_best))
    if c.early_stopping.enabled:
        out.append(tf.keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=c.early_stopping.patience,
            min_delta=c.early_stopping.min_delta, restore_best_weights=c.early_stopping.restore_best_weights))
    if c.reduce_lr.enabled:
        out.append(tf.keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="max", factor=c.reduce_lr.factor, patience=c.reduce_lr.patience,
            min_lr=c.reduce_lr.min_lr))
    out.append(StopOnNaN(run.optimizer.learning_rate, per_batch=False))
    out.extend(instantiate(node) for node in c.extra)
    return out
