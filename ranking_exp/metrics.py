"""Ranking metrics, one implementation for training, validation, test and ``predict``.

``metrics.convention=standard`` (default): NDCG@k (gain 2^label - 1, discount 1/log2(rank + 1)),
MAP and MRR are TF Ranking's Keras metrics (tied scores in random order). Queries without any
relevant document (all labels <= 0) are *skipped* by default: they get weight 0, so they change
no average, matching LightGBM practice and the reference numbers in the README.
``metrics.lists_without_relevant=zero`` counts them as 0 instead (TF Ranking's own default).

``metrics.convention=letor`` reproduces LETOR 4.0's official script (Eval-Score-4.0.pl, which
the MQ2007/MQ2008 baselines were scored with), rule by rule:

- gain 2^label - 1 (the script's table 0, 1, 3 for labels 0, 1, 2; larger labels extend it);
- discount 1 at ranks 1 *and* 2, 1/log2(rank) from rank 3 on (DCG@k = g1 + g2 + sum g_r/log2 r);
- documents ranked by score, ties in input order (the script sorts by line, then stably by score);
- NDCG@k = DCG@k / ideal DCG@k, and 0 when the query has no relevant document;
- NDCG@k = 0 for a query with fewer than k documents (the script computes NDCG only at ranks
  1..n and adds the missing entries as 0 to the mean);
- MAP: relevant = label >= 1, average precision over the whole list, 0 without relevant docs;
- every query counts in every average (none is skipped);
- MRR is not in the script: reciprocal rank of the first label >= 1, 0 without one, ties and
  averaging as above.

Padding (label < 0) never counts.
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


class _LetorMetric(tf.keras.metrics.Mean):
    """A per-query value by LETOR 4.0's rules, averaged over every query with a document."""

    def __init__(self, name=None, topn=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self._topn = topn

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.cast(tf.convert_to_tensor(y_true), tf.float32)
        scores = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
        if labels.shape.rank == 3:
            labels = tf.squeeze(labels, -1)
        if scores.shape.rank == 3:
            scores = tf.squeeze(scores, -1)
        valid = labels >= 0.0
        num_docs = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
        # Padding last; top_k (behind a descending argsort) puts the lower index first among ties.
        masked = tf.where(valid, scores, tf.fill(tf.shape(scores), float("-inf")))
        order = tf.argsort(masked, axis=1, direction="DESCENDING", stable=True)
        ranked = tf.gather(tf.where(valid, labels, 0.0), order, batch_dims=1)
        ranks = tf.cast(tf.range(1, tf.shape(labels)[1] + 1), tf.float32)[tf.newaxis, :]
        values = self._per_query(ranked, ranks, num_docs)
        weights = tf.cast(num_docs > 0, tf.float32)
        if sample_weight is not None:  # per document: a query weighs the mean over its documents
            w = tf.cast(tf.convert_to_tensor(sample_weight), tf.float32) * tf.ones_like(labels)
            w = tf.reduce_sum(tf.where(valid, w, 0.0), axis=1) / tf.maximum(tf.cast(num_docs, tf.float32), 1.0)
            weights = weights * w
        return super().update_state(values, sample_weight=weights)

    def _per_query(self, ranked, ranks, num_docs):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "topn": self._topn}


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class LetorNDCG(_LetorMetric):
    """NDCG@topn as LETOR 4.0's Eval-Score-4.0.pl computes it (see the module docstring)."""

    def _per_query(self, ranked, ranks, num_docs):
        gains = tf.pow(2.0, ranked) - 1.0
        ideal = tf.sort(gains, axis=1, direction="DESCENDING")
        discount = tf.where(ranks <= 2.0, 1.0, tf.math.log(2.0) / tf.math.log(tf.maximum(ranks, 2.0)))
        if self._topn is not None:
            discount = tf.where(ranks <= float(self._topn), discount, 0.0)
        dcg = tf.reduce_sum(gains * discount, axis=1)
        ideal_dcg = tf.reduce_sum(ideal * discount, axis=1)
        ndcg = tf.math.divide_no_nan(dcg, ideal_dcg)
        if self._topn is not None:
            ndcg = tf.where(num_docs >= self._topn, ndcg, 0.0)
        return ndcg


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class LetorMAP(_LetorMetric):
    """Average precision (relevant: label >= 1), 0 for a query without a relevant document."""

    def _per_query(self, ranked, ranks, num_docs):
        relevant = tf.cast(ranked >= 1.0, tf.float32)
        precision = tf.cumsum(relevant, axis=1) / ranks
        return tf.math.divide_no_nan(tf.reduce_sum(precision * relevant, axis=1), tf.reduce_sum(relevant, axis=1))


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class LetorMRR(_LetorMetric):
    """Reciprocal rank of the first document with label >= 1 (ties in input order), else 0."""

    def _per_query(self, ranked, ranks, num_docs):
        return tf.reduce_max(tf.cast(ranked >= 1.0, tf.float32) / ranks, axis=1)


def build_metrics(cfg: MetricsConfig) -> list[tf.keras.metrics.Metric]:
    """The configured metrics, named ``ndcg_{k}``, ``map``, ``mrr`` (Keras adds ``val_``)."""
    if cfg.convention == "letor":
        out: list[tf.keras.metrics.Metric] = [LetorNDCG(name=f"ndcg_{k}", topn=k) for k in cfg.ndcg_topn]
        if cfg.map:
            out.append(LetorMAP(name="map"))
        if cfg.mrr:
            out.append(LetorMRR(name="mrr"))
        return out
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
