"""The Keras callback a sweep trial trains with: reports the validation metric to its Optuna
trial every epoch and stops the run at once when the pruner says so.

The sweeper hands it to the job as a ``callbacks.extra`` config node, so the training code
never imports optuna.
"""
from __future__ import annotations

import math

import optuna
import tensorflow as tf

from hydra_plugins.ranking_exp_sweeper.config import PrunerConfig
from hydra_plugins.ranking_exp_sweeper.factories import TrialPruned, make_pruner


class OptunaPruningCallback(tf.keras.callbacks.Callback):
    def __init__(self, storage: str, study_name: str, trial_id: int, monitor: str, pruner: dict | None = None):
        super().__init__()
        self.storage_url, self.study_name, self.trial_id, self.monitor = storage, study_name, trial_id, monitor
        # The storage does not keep the pruner: rebuild the sweep's from its config.
        self.pruner = make_pruner(PrunerConfig(**dict(pruner or {})))
        self._trial = None

    def _get_trial(self) -> optuna.Trial:
        if self._trial is None:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage_url, pruner=self.pruner)
            self._trial = optuna.Trial(study, self.trial_id)
        return self._trial

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        trial = self._get_trial()
        if len(trial.study.directions) > 1:  # Optuna cannot prune multi-objective studies
            return
        trial.report(float(value), step=epoch)
        if trial.should_prune():
            self.model.stop_training = True
            raise TrialPruned(f"trial {trial.number} pruned after epoch {epoch + 1} ({self.monitor}={value:.4f})")
