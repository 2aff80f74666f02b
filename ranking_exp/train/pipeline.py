"""TF Ranking's ModelFitPipeline, configured from a RunConfig.

We override only the steps TF Ranking leaves to subclasses (loss, metrics, callbacks) plus
the optimizer and strategy it would otherwise build from strings, and we keep a handle on
the trained model and the exports. Training, validation and export stay TF Ranking's.
"""
from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import LossConfig, RunConfig
from ranking_exp.data.builder import RankingDatasetBuilder
from ranking_exp.metrics import build_metrics
from ranking_exp.train.callbacks import build_callbacks
from ranking_exp.train.optimizer import build_optimizer
from ranking_exp.train.strategy import make_strategy

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
    def __init__(self, model_builder, dataset_builder: RankingDatasetBuilder, run: RunConfig,
                 extra_callbacks: list[tf.keras.callbacks.Callback] = ()):
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
        self._optimizer = build_optimizer(run.optimizer)
        self._strategy = make_strategy(run.strategy)
        self._extra_callbacks = list(extra_callbacks)
        self.model: tf.keras.Model | None = None
        self.exports: dict[str, str] = {}

    def build_loss(self):
        return build_loss(self._run.loss)

    def build_metrics(self):
        return build_metrics(self._run.metrics)

    def build_weighted_metrics(self):
        return build_metrics(self._run.metrics)

    def build_callbacks(self):
        # Bookkeeping (MLflow) first, so an epoch is recorded even when a later callback
        # (e.g. a sweep's pruning callback) ends training at that epoch.
        return self._extra_callbacks + build_callbacks(self._run, self._hparams.model_dir)

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
        kind = "best" if checkpoint else "last"
        self.exports[kind] = export_to

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
