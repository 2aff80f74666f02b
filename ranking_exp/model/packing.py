"""Score real documents only.

Lists in a batch are padded to the longest one (or to ``train.list_size``), and TF Ranking's
``UnivariateScorer`` runs its tower on every slot, padding included: on MQ2008-like data
most of the compute is spent on documents that don't exist. ``PackedScorer`` wraps any
univariate scorer (DNN, GAM, linear, a user's subclass): it gathers the valid documents of
the batch into one ``[num_docs, ...]`` block, calls the scorer's own ``_score_flattened`` on
it, and scatters the scores back into ``[batch, list_size]``. Padded slots get the same
large negative score ``tfr.keras.layers.RestoreList`` gives them, so losses, metrics and
exported models see exactly what they would without packing; batch-norm statistics are
taken over real documents instead of TF Ranking's circularly repeated ones.
"""
from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_ranking as tfr

PADDING_SCORE = math.log(1e-10)  # tfr.keras.layers.RestoreList's score for padded slots


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class PackList(tf.keras.layers.Layer):
    """(context ``{name: [B, ...]}``, example ``{name: [B, L, ...]}``, mask ``[B, L]``) ->
    (context ``{name: [N, ...]}``, example ``{name: [N, ...]}``, indices ``[N, 2]``),
    N = the number of valid documents, each document with its list's context."""

    def call(self, inputs):
        context, example, mask = inputs
        indices = tf.where(mask)
        rows = indices[:, 0]
        packed_context = {name: tf.gather(t, rows) for name, t in context.items()}
        packed_example = {name: tf.gather_nd(t, indices) for name, t in example.items()}
        return packed_context, packed_example, indices


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class UnpackList(tf.keras.layers.Layer):
    """(scores ``[N]`` or ``[N, 1]``, indices ``[N, 2]``, mask ``[B, L]``) -> ``[B, L]``."""

    def call(self, inputs):
        scores, indices, mask = inputs
        scores = tf.reshape(scores, [-1])
        dense = tf.scatter_nd(indices, scores, tf.shape(mask, out_type=tf.int64))
        return tf.where(mask, dense, tf.cast(PADDING_SCORE, dense.dtype))


class PackedScorer(tfr.keras.model.Scorer):
    """``scorer``'s tower on the valid documents only; same outputs as ``scorer`` itself."""

    def __init__(self, scorer: tfr.keras.model.UnivariateScorer):
        self.scorer = scorer

    def __call__(self, context_features, example_features, mask):
        context, example, indices = PackList(name="pack_list")((context_features, example_features, mask))
        scores = self.scorer._score_flattened(context, example)  # noqa: SLF001 (TF Ranking's extension point)
        if isinstance(scores, dict):  # multi-task heads
            return {k: UnpackList(name=k)((v, indices, mask)) for k, v in scores.items()}
        return UnpackList(name="unpack_list")((scores, indices, mask))


def pack(scorer):
    """``scorer`` wrapped in a PackedScorer when it is univariate (others see whole lists)."""
    if isinstance(scorer, tfr.keras.model.UnivariateScorer):
        return PackedScorer(scorer)
    return scorer
