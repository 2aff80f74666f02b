"""Scorers: TF Ranking's DNN and GAM scorers, a linear one, or the user's, from the config."""
from __future__ import annotations

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import CustomScorerConfig, DNNScorerConfig, GAMScorerConfig, LinearScorerConfig
from ranking_exp.errors import ConfigError
from ranking_exp.plugins import load_callable


class LinearScorer(tfr.keras.model.UnivariateScorer):
    """Scores each document by one weight per (preprocessed) feature plus a bias."""

    def __init__(self, l2: float = 0.0):
        self._l2 = l2

    def _score_flattened(self, context_features, example_features):
        columns = [tf.keras.layers.Flatten()(context_features[n]) for n in sorted(context_features)]
        columns += [tf.keras.layers.Flatten()(example_features[n]) for n in sorted(example_features)]
        x = tf.concat(columns, axis=1)
        reg = tf.keras.regularizers.l2(self._l2) if self._l2 else None
        return tf.keras.layers.Dense(1, kernel_regularizer=reg, name="linear")(x)


def _activation(name: str):
    return tf.nn.leaky_relu if name == "leaky_relu" else tf.keras.activations.get(name)


def _dnn(c: DNNScorerConfig):
    return tfr.keras.model.DNNScorer(
        hidden_layer_dims=list(c.hidden_layer_dims), output_units=1, activation=_activation(c.activation),
        input_batch_norm=c.input_batch_norm, use_batch_norm=c.use_batch_norm,
        batch_norm_moment=c.batch_norm_moment, dropout=c.dropout)


def _gam(c: GAMScorerConfig):
    return tfr.keras.model.GAMScorer(
        example_hidden_layer_dims=list(c.example_hidden_layer_dims),
        context_hidden_layer_dims=list(c.context_hidden_layer_dims),
        activation=_activation(c.activation), use_batch_norm=c.use_batch_norm,
        batch_norm_moment=c.batch_norm_moment, dropout=c.dropout)


def _linear(c: LinearScorerConfig):
    return LinearScorer(l2=c.l2)


def _custom(c: CustomScorerConfig):
    scorer = load_callable(c.target, "scorer.target")(**c.kwargs)
    if not callable(scorer):
        raise ConfigError(f"scorer.target: {c.target} returned a non-callable {type(scorer).__name__}")
    return scorer


SCORERS = {DNNScorerConfig: _dnn, GAMScorerConfig: _gam, LinearScorerConfig: _linear, CustomScorerConfig: _custom}


def build_scorer(cfg) -> tfr.keras.model.Scorer:
    return SCORERS[type(cfg)](cfg)
