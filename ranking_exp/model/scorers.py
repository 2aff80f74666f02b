"""Scorers: TF Ranking's DNN and GAM scorers, a linear one, DASALC, or the user's, from the config."""
from __future__ import annotations

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import (CustomScorerConfig, DASALCScorerConfig, DNNScorerConfig, GAMScorerConfig,
                                LinearScorerConfig)
from ranking_exp.errors import ConfigError
from ranking_exp.model.dasalc import DASALCScorer, feature_vector, input_block
from ranking_exp.model.fast_layers import swap_fast_layers
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


class DNNScorer(tfr.keras.model.DNNScorer):
    """TF Ranking's DNNScorer, optionally with Gaussian noise on its input (after the input batch
    norm) in training only (DASALC's data augmentation), each feature's periodic embedding
    (``numeric_embedding.py``), and the tower's dropout and batch norm on cheaper kernels
    (``fast_layers.py``)."""

    def __init__(self, input_noise: float = 0.0, fast_layers: bool = False, numeric_embedding: dict | None = None,
                 **dnn_kwargs):
        super().__init__(**dnn_kwargs)
        self._input_noise = input_noise
        self._fast_layers = fast_layers
        self._numeric_embedding = numeric_embedding

    def _score_flattened(self, context_features, example_features):
        kwargs = dict(self._dnn_kwargs)
        x = input_block(feature_vector(context_features, example_features), kwargs.pop("input_batch_norm", False),
                        kwargs.get("batch_norm_moment", 0.999), self._input_noise, self._fast_layers,
                        self._numeric_embedding)
        tower = tfr.keras.layers.create_tower(input_batch_norm=False, **kwargs)
        return (swap_fast_layers(tower) if self._fast_layers else tower)(x)


def _dnn(c: DNNScorerConfig):
    kwargs = dict(hidden_layer_dims=list(c.hidden_layer_dims), output_units=1, activation=_activation(c.activation),
                  input_batch_norm=c.input_batch_norm, use_batch_norm=c.use_batch_norm,
                  batch_norm_moment=c.batch_norm_moment, dropout=c.dropout)
    embedding = c.numeric_embedding.layer_kwargs()
    if c.input_noise > 0 or c.fast_layers or embedding is not None:
        return DNNScorer(input_noise=c.input_noise, fast_layers=c.fast_layers, numeric_embedding=embedding, **kwargs)
    return tfr.keras.model.DNNScorer(**kwargs)  # exactly TF Ranking's


def _gam(c: GAMScorerConfig):
    return tfr.keras.model.GAMScorer(
        example_hidden_layer_dims=list(c.example_hidden_layer_dims),
        context_hidden_layer_dims=list(c.context_hidden_layer_dims),
        activation=_activation(c.activation), use_batch_norm=c.use_batch_norm,
        batch_norm_moment=c.batch_norm_moment, dropout=c.dropout)


def _dasalc(c: DASALCScorerConfig):
    return DASALCScorer(
        hidden_layer_dims=list(c.hidden_layer_dims), activation=_activation(c.activation),
        use_batch_norm=c.use_batch_norm, input_batch_norm=c.input_batch_norm,
        batch_norm_moment=c.batch_norm_moment, dropout=c.dropout, input_noise=c.input_noise,
        num_attention_layers=c.num_attention_layers, num_heads=c.num_heads, head_size=c.head_size,
        attention_dropout=c.attention_dropout, fast_layers=c.fast_layers,
        numeric_embedding=c.numeric_embedding.layer_kwargs())


def _linear(c: LinearScorerConfig):
    return LinearScorer(l2=c.l2)


def _custom(c: CustomScorerConfig):
    scorer = load_callable(c.target, "scorer.target")(**c.kwargs)
    if not callable(scorer):
        raise ConfigError(f"scorer.target: {c.target} returned a non-callable {type(scorer).__name__}")
    return scorer


SCORERS = {DNNScorerConfig: _dnn, GAMScorerConfig: _gam, LinearScorerConfig: _linear, CustomScorerConfig: _custom,
           DASALCScorerConfig: _dasalc}


def build_scorer(cfg) -> tfr.keras.model.Scorer:
    return SCORERS[type(cfg)](cfg)
