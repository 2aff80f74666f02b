"""TF Ranking's ModelFitPipeline, configured from a RunConfig.

We override only the steps TF Ranking leaves to subclasses (loss, metrics, callbacks) plus
the optimizer and strategy it would otherwise build from strings, and we keep a handle on
the trained model and the exports. Training, validation and export stay TF Ranking's.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import LossConfig, RunConfig
from ranking_exp.data.builder import RankingDatasetBuilder
from ranking_exp.metrics import build_metrics
from ranking_exp.train.callbacks import BestWeights, EpochsRun, build_callbacks
from ranking_exp.train.optimizer import build_optimizer
from ranking_exp.train.resume import ResumeDir, make_state_callback

LAST_EXPORT = "export/latest_model"  # TF Ranking's names for the two exports
BEST_EXPORT = "export/best_model_by_metric"

_LAMBDA_WEIGHTS = {
    "ndcg": tfr.keras.losses.NDCGLambdaWeight,
    "ndcg_v2": tfr.keras.losses.NDCGLambdaWeightV2,
    "dcg": tfr.keras.losses.DCGLambdaWeight,
    "label_diff": tfr.keras.losses.LabelDiffLambdaWeight,
    "precision": tfr.keras.losses.PrecisionLambdaWeight,
    "list_mle": tfr.keras.losses.ListMLELambdaWeight,
    "yeti_dcg": tfr.keras.losses.YetiDCGLambdaWeight,
}


def build_loss(cfg: LossConfig) -> tf.keras.losses.Loss:
    kwargs = dict(cfg.kwargs)
    if cfg.temperature is not None:
        kwargs["temperature"] = cfg.temperature
    lambda_weight = None
    if cfg.lambda_weight is not None:
        lw_cls = _LAMBDA_WEIGHTS[cfg.lambda_weight]
        lw_kwargs = {}
        if cfg.lambda_weight_topn is not None and cfg.lambda_weight not in ("label_diff", "list_mle"):
            lw_kwargs["topn"] = cfg.lambda_weight_topn
        lambda_weight = lw_cls(**lw_kwargs)
    return tfr.keras.losses.get(cfg.key, reduction=cfg.reduction, lambda_weight=lambda_weight, **kwargs)


class RankingPipeline(tfr.keras.pipeline.ModelFitPipeline):
    """``strategy``: made by ``make_strategy`` before TensorFlow's first op (None: no distribution).
    ``is_chief``: whether this process exports (a non-chief worker of a multi-worker run saves
    to a throwaway directory, since every worker must take part in saving). ``resume``: where
    BackupAndRestore keeps its state, or None to train without backups."""

    def __init__(self, model_builder, dataset_builder: RankingDatasetBuilder, run: RunConfig,
                 extra_callbacks: list[tf.keras.callbacks.Callback] = (), *,
                 strategy: tf.distribute.Strategy | None = None, is_chief: bool = True,
                 resume: ResumeDir | None = None, initial_best: float | None = None):
        hparams = tfr.keras.pipeline.PipelineHparams(
            model_dir=run.output_dir,
            num_epochs=run.train.epochs,
            steps_per_epoch=None,  # one pass over the data per epoch
            validation_steps=None,
            learning_rate=run.optimizer.learning_rate,
            loss=run.loss.key,
            optimizer=run.optimizer.name,
            steps_per_execution=run.train.steps_per_execution,
            export_best_model=run.export.best,
            best_exporter_metric=run.metrics.monitor,
            best_exporter_metric_higher_better=True,
            strategy=None,
        )
        super().__init__(model_builder, dataset_builder, hparams)
        self._run = run
        self._strategy = strategy
        with tfr.keras.strategy_utils.strategy_scope(strategy):
            self._optimizer = build_optimizer(run.optimizer)
        self._extra_callbacks = list(extra_callbacks)
        self._is_chief = is_chief
        self._resume = resume
        self._initial_best = initial_best
        self._best_weights = BestWeights(f"val_{run.metrics.monitor}", initial_best)
        self.epochs_run = EpochsRun()
        self.model: tf.keras.Model | None = None
        self.exports: dict[str, str] = {}

    def build_loss(self):
        return build_loss(self._run.loss)

    def build_metrics(self):
        return build_metrics(self._run.metrics)

    def build_weighted_metrics(self):
        return build_metrics(self._run.metrics)

    @property
    def best_dir(self) -> str:
        if self._resume is not None:
            return self._resume.best_dir  # survives a kill, like the backup
        return os.path.join(self._hparams.model_dir, "best_checkpoint")

    def build_callbacks(self):
        # Bookkeeping (MLflow) first, so an epoch is recorded even when a later callback (e.g. a
        # sweep's pruning callback) ends training at that epoch; the backup last, so a restored
        # epoch has its metrics recorded and its best checkpoint written.
        out: list[tf.keras.callbacks.Callback] = [self.epochs_run, *self._extra_callbacks]
        out += build_callbacks(self._run, self._hparams.model_dir, best_dir=self.best_dir,
                               initial_best=self._initial_best)
        if self._resume is not None:
            if self._is_chief:  # the best value so far, before the backup that makes it count
                out.append(make_state_callback(self._resume, f"val_{self._run.metrics.monitor}"))
            out.append(tf.keras.callbacks.BackupAndRestore(backup_dir=self._resume.backup_dir))
        if isinstance(self._strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # On every worker: reading weights (batch-norm statistics) is a collective operation.
            out.append(self._best_weights)
        return out

    def train_and_validate(self, verbose=0):
        """TF Ranking's ``train_and_validate`` with exports that work under every strategy: the
        chief exports to the run dir, other workers save to a throwaway directory (TF Ranking's
        version treats worker 0 of a chief-less cluster as a non-chief and loads the best
        checkpoint on every worker from a directory only the chief writes)."""
        strategy = self._strategy
        with tfr.keras.strategy_utils.strategy_scope(strategy):
            model = self._model_builder.build()
            model.compile(
                optimizer=self._optimizer,
                loss=self.build_loss(),
                metrics=self.build_metrics(),
                loss_weights=self._hparams.loss_weights,
                weighted_metrics=(self.build_weighted_metrics() if self._hparams.use_weighted_metrics else None),
                steps_per_execution=self._hparams.steps_per_execution)
            train_dataset, valid_dataset = (self._dataset_builder.build_train_dataset(),
                                            self._dataset_builder.build_valid_dataset())
            model.fit(x=train_dataset, epochs=self._hparams.num_epochs, steps_per_epoch=self._hparams.steps_per_epoch,
                      validation_steps=self._hparams.validation_steps, validation_data=valid_dataset,
                      callbacks=self.build_callbacks(), verbose=verbose)

            root = self._hparams.model_dir if self._is_chief else tempfile.mkdtemp(prefix="ranking_exp_worker_")
            try:
                self.export_saved_model(model, export_to=os.path.join(root, LAST_EXPORT))
                if self._hparams.export_best_model:
                    self._export_best(model, root)
            finally:
                if not self._is_chief:
                    shutil.rmtree(root, ignore_errors=True)
                    self.exports = {}

    def _export_best(self, model: tf.keras.Model, root: str) -> None:
        best_checkpoint = tf.train.latest_checkpoint(self.best_dir)
        if not self._is_chief and best_checkpoint is None:
            if self._best_weights.weights is None:  # every worker must save as often as the chief
                raise ValueError("Didn't find the best checkpoint.")
            model.set_weights(self._best_weights.weights)
            best_checkpoint = None
        elif best_checkpoint is None:
            raise ValueError("Didn't find the best checkpoint.")
        self.export_saved_model(model, export_to=os.path.join(root, BEST_EXPORT), checkpoint=best_checkpoint)
        self.exports["best"] = os.path.join(root, BEST_EXPORT)
        if self._is_chief and self._resume is not None:  # the run dir keeps its best checkpoint too
            shutil.copytree(self.best_dir, os.path.join(self._hparams.model_dir, "best_checkpoint"), dirs_exist_ok=True)

    def export_saved_model(self, model, export_to, checkpoint=None):
        """TF Ranking's export, plus the feature spec beside it (the serving format).

        ``save_traces=False``: the signatures serve the model, and skipping Keras' per-layer
        traces halves export time.
        """
        if checkpoint:
            model.load_weights(checkpoint)
        model.save(filepath=export_to, signatures=self._dataset_builder.build_signatures(model), save_traces=False)
        self._dataset_builder.spec.save(export_to)
        self.model = model  # holds the best weights after the best export
        self.exports.setdefault("last", export_to)

    @property
    def strategy(self):
        return self._strategy

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """The configured metrics of the trained model (best weights when exported) on ``dataset``."""
        results = self.model.evaluate(dataset, return_dict=True, verbose=0)
        return {k: float(v) for k, v in results.items() if k != "loss"}

    @staticmethod
    def export_dirs(model_dir: str) -> dict[str, str]:
        return {"last": os.path.join(model_dir, LAST_EXPORT), "best": os.path.join(model_dir, BEST_EXPORT)}
