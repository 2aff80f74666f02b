"""DASALC (Qin et al., ICLR 2021, "Are Neural Rankers still Outperformed by Gradient Boosted
Decision Trees?") and the input block it shares with the DNN scorer.

Per document, on the batch's real documents only (packed as in ``packing.py``): the features
are concatenated (context features repeated for each document of their list, as TF Ranking's
``FlattenList`` does), batch-normalized (``input_batch_norm``), perturbed with Gaussian noise in
training (``input_noise``) and fed to a feed-forward tower. In parallel, TF Ranking's
``DocumentInteractionAttention`` (multi-head self-attention with residual connections and
layer norm) runs over each list on the padded ``[batch, list, d]`` layout, masked so that
padded slots are never attended. The two meet in DASALC's latent cross,
``tower * (1 + Dense(attention))``, and a dense layer gives each document its score; padded
slots get the score ``tfr.keras.layers.RestoreList`` gives them.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.model.fast_layers import FusedBatchNormalization, swap_fast_layers
from ranking_exp.model.numeric_embedding import PeriodicEmbedding
from ranking_exp.model.packing import PackList, UnpackList


def feature_vector(context_features: dict, example_features: dict) -> tf.Tensor:
    """``[N, d]``: every (flattened) context feature then every example feature, by name, as
    TF Ranking's ``DNNScorer`` concatenates them."""
    columns = [tf.keras.layers.Flatten()(context_features[n]) for n in sorted(context_features)]
    columns += [tf.keras.layers.Flatten()(example_features[n]) for n in sorted(example_features)]
    return tf.keras.layers.Concatenate(axis=1)(columns) if len(columns) > 1 else columns[0]


def input_block(x: tf.Tensor, input_batch_norm: bool, batch_norm_moment: float, input_noise: float,
                fast_layers: bool = False, numeric_embedding: dict | None = None) -> tf.Tensor:
    """Input batch norm (where on), then Gaussian noise of stddev ``input_noise`` in training only,
    then each feature's periodic embedding (``numeric_embedding``: ``PeriodicEmbedding``'s
    arguments; None: the features as they are)."""
    if input_batch_norm:
        bn = FusedBatchNormalization if fast_layers else tf.keras.layers.BatchNormalization
        x = bn(momentum=batch_norm_moment, name="input_batch_norm")(x)
    if input_noise > 0:
        x = tf.keras.layers.GaussianNoise(input_noise, name="input_noise")(x)
    if numeric_embedding is not None:
        x = PeriodicEmbedding(**numeric_embedding, name="numeric_embedding")(x)
    return x


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class ScatterList(tf.keras.layers.Layer):
    """(values ``[N, d]``, indices ``[N, 2]``, mask ``[B, L]``) -> ``[B, L, d]``, zeros in padded slots."""

    def call(self, inputs):
        values, indices, mask = inputs
        shape = tf.concat([tf.shape(mask, out_type=tf.int64), tf.shape(values, out_type=tf.int64)[1:]], axis=0)
        out = tf.scatter_nd(indices, values, shape)
        out.set_shape([None, None, *values.shape[1:]])
        return out


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class GatherList(tf.keras.layers.Layer):
    """(values ``[B, L, d]``, indices ``[N, 2]``) -> ``[N, d]``: the real documents' rows."""

    def call(self, inputs):
        values, indices = inputs
        return tf.gather_nd(values, indices)


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class ListAttention(tfr.keras.layers.DocumentInteractionAttention):
    """TF Ranking's layer, in inference mode unless Keras says otherwise (its own ``call``
    defaults to ``training=True``, which would apply dropout in a bare ``model(x)``)."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=training)


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class LatentCross(tf.keras.layers.Layer):
    """(tower ``h``, projected attention ``a``) -> ``h * (1 + a)`` (DASALC's latent cross)."""

    def call(self, inputs):
        h, a = inputs
        return h * (1.0 + a)


class DASALCScorer(tfr.keras.model.Scorer):
    """A listwise scorer: each document's score depends on the other documents of its list."""

    def __init__(self, hidden_layer_dims: list[int], activation=tf.nn.relu, use_batch_norm: bool = True,
                 input_batch_norm: bool = True, batch_norm_moment: float = 0.99, dropout: float = 0.2,
                 input_noise: float = 0.0, num_attention_layers: int = 2, num_heads: int = 2,
                 head_size: int = 64, attention_dropout: float = 0.1, fast_layers: bool = False,
                 numeric_embedding: dict | None = None):
        self.fast_layers = fast_layers
        self.numeric_embedding = numeric_embedding
        self.hidden_layer_dims = list(hidden_layer_dims)
        self.activation = activation
        self.use_batch_norm = use_batch_norm
        self.input_batch_norm = input_batch_norm
        self.batch_norm_moment = batch_norm_moment
        self.dropout = dropout
        self.input_noise = input_noise
        self.num_attention_layers = num_attention_layers
        self.num_heads = num_heads
        self.head_size = head_size
        self.attention_dropout = attention_dropout

    def _tower(self) -> tf.keras.Sequential:
        """TF Ranking's ``create_tower`` without its output layer: the last hidden layer's
        activations are the document's representation."""
        tower = tf.keras.Sequential(name="document_tower")
        for width in self.hidden_layer_dims:
            tower.add(tf.keras.layers.Dense(width))
            if self.use_batch_norm:
                tower.add(tf.keras.layers.BatchNormalization(momentum=self.batch_norm_moment))
            tower.add(tf.keras.layers.Activation(self.activation))
            if self.dropout:
                tower.add(tf.keras.layers.Dropout(self.dropout))
        return swap_fast_layers(tower) if self.fast_layers else tower

    def __call__(self, context_features, example_features, mask):
        context, example, indices = PackList(name="pack_list")((context_features, example_features, mask))
        x = input_block(feature_vector(context, example), self.input_batch_norm, self.batch_norm_moment,
                        self.input_noise, self.fast_layers, self.numeric_embedding)  # [N, d] (or [N, d * dim] embedded)
        h = self._tower()(x)  # [N, width]
        attention = ListAttention(num_heads=self.num_heads, head_size=self.head_size,
                                  num_layers=self.num_attention_layers, dropout=self.attention_dropout,
                                  name="list_attention")
        a = attention((ScatterList(name="scatter_list")((x, indices, mask)), mask))  # [B, L, head_size]
        a = GatherList(name="gather_list")((a, indices))  # [N, head_size]
        a = tf.keras.layers.Dense(self.hidden_layer_dims[-1], name="attention_projection")(a)
        scores = tf.keras.layers.Dense(1, name="score")(LatentCross(name="latent_cross")((h, a)))
        return UnpackList(name="unpack_list")((scores, indices, mask))
