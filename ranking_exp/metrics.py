"""Ranking metrics, one implementation for training, validation, test and ``predict``.

NDCG@k (gain 2^label - 1, discount 1/log2(rank + 1)), MAP and MRR are TF Ranking's Keras
metrics. Queries without any relevant document (all labels <= 0) are *skipped* by default:
they get weight 0, so they change no average, matching LETOR/LightGBM practice and the
reference numbers in the README. ``metrics.lists_without_relevant=zero`` counts them as 0
instead (TF Ranking's own default). Padding (label < 0) never counts.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import MetricsConfig


class _SkipListsWithoutRelevant:
    """Mixin: zero weight for every list with no relevant document."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.convert_to_tensor(y_true)
        has_relevant = tf.reduce_any(y_true > 0.0, axis=1, keepdims=True)
        weights = tf.cast(has_relevant, tf.float32) * tf.ones_like(y_true, dtype=tf.float32)
        if sample_weight is not None:
            weights = weights * tf.cast(sample_weight, tf.float32)
        return super().update_state(y_true, y_pred, sample_weight=weights)


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class NDCG(_SkipListsWithoutRelevant, tfr.keras.metrics.NDCGMetric):
    pass


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class MAP(_SkipListsWithoutRelevant, tfr.keras.metrics.MeanAveragePrecisionMetric):
    pass


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class MRR(_SkipListsWithoutRelevant, tfr.keras.metrics.MRRMetric):
    pass


def build_metrics(cfg: MetricsConfig) -> list[tf.keras.metrics.Metric]:
    """The configured metrics, named ``ndcg_{k}``, ``map``, ``mrr`` (Keras adds ``val_``)."""
    skip = cfg.lists_without_relevant == "skip"
    ndcg = NDCG if skip else tfr.keras.metrics.NDCGMetric
    out: list[tf.keras.metrics.Metric] = [ndcg(name=f"ndcg_{k}", topn=k) for k in cfg.ndcg_topn]
    if cfg.map:
        out.append((MAP if skip else tfr.keras.metrics.MeanAveragePrecisionMetric)(name="map"))
    if cfg.mrr:
        out.append((MRR if skip else tfr.keras.metrics.MRRMetric)(name="mrr"))
    return out


def pad_lists(lists: Sequence[np.ndarray], fill: float) -> np.ndarray:
    """Stacks variable-length 1-D arrays into [num_lists, max_len], padding with ``fill``."""
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), width), fill, dtype=np.float32)
    for i, x in enumerate(lists):
        out[i, : len(x)] = x
    return out


def evaluate_lists(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray], cfg: MetricsConfig,
                   batch_size: int = 256) -> dict[str, float]:
    """Metrics over per-query label and score arrays (as read from a LETOR file)."""
    metrics = build_metrics(cfg)
    for start in range(0, len(labels), batch_size):
        y = pad_lists(labels[start:start + batch_size], fill=-1.0)
        s = pad_lists(scores[start:start + batch_size], fill=0.0)
        for m in metrics:
            m.update_state(y, s)
    return {m.name: float(m.result().numpy()) for m in metrics}
