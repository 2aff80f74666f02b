"""Periodic embeddings of numeric features (Gorishniy et al., NeurIPS 2022, "On Embeddings for
Numerical Features in Tabular Deep Learning": the PLR embedding).

Why: a tower fed raw numbers finds sharp, threshold-like functions of one feature hard to learn,
which is what gradient-boosted trees are made of. Here each feature ``x_j`` becomes
``ReLU(W_j [cos(2 pi c_j x_j), sin(2 pi c_j x_j)] + b_j)``, with ``k`` trainable frequencies
``c_j`` per feature (initialized from a normal of stddev ``sigma``, truncated at two stddevs) and
a ``dim``-wide linear map per feature (``lite``: one map shared by all features). The ``[N, d]``
input becomes ``[N, d * dim]``; the tower (and DASALC's attention) read that instead.
"""
from __future__ import annotations

import math

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
class PeriodicEmbedding(tf.keras.layers.Layer):
    """``[N, d]`` -> ``[N, d * dim]``: each of the ``d`` features embedded on its own."""

    def __init__(self, frequencies: int = 48, sigma: float = 0.01, dim: int = 24, lite: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.frequencies = int(frequencies)
        self.sigma = float(sigma)
        self.dim = int(dim)
        self.lite = bool(lite)

    def build(self, input_shape):
        d = input_shape[-1]
        if d is None:
            raise ValueError("PeriodicEmbedding needs the number of features (the input's last axis) to be known")
        self.num_features = int(d)
        self.frequency = self.add_weight(
            name="frequency", shape=(self.num_features, self.frequencies),
            initializer=tf.keras.initializers.TruncatedNormal(stddev=self.sigma))
        # As a linear layer's default in the paper's code: uniform in +-1/sqrt(fan_in), bias too.
        bound = 1.0 / math.sqrt(2 * self.frequencies)
        shape = (2 * self.frequencies, self.dim) if self.lite else (self.num_features, 2 * self.frequencies, self.dim)
        self.kernel = self.add_weight(name="kernel", shape=shape,
                                      initializer=tf.keras.initializers.RandomUniform(-bound, bound))
        self.bias = self.add_weight(name="bias", shape=(self.num_features, self.dim),
                                    initializer=tf.keras.initializers.RandomUniform(-bound, bound))
        super().build(input_shape)

    def call(self, x):
        angle = (2.0 * math.pi) * x[..., None] * self.frequency  # [N, d, k]
        periodic = tf.concat([tf.cos(angle), tf.sin(angle)], axis=-1)  # [N, d, 2k]
        equation = "ndk,km->ndm" if self.lite else "ndk,dkm->ndm"
        y = tf.nn.relu(tf.einsum(equation, periodic, self.kernel) + self.bias)  # [N, d, dim]
        return tf.reshape(y, [-1, self.num_features * self.dim])

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], input_shape[-1] * self.dim])

    def get_config(self):
        return {**super().get_config(), "frequencies": self.frequencies, "sigma": self.sigma, "dim": self.dim,
                "lite": self.lite}
