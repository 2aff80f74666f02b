"""User code plugged in by import path, as a framework user would write it."""
from __future__ import annotations

import tensorflow as tf
import tensorflow_ranking as tfr


class TinyScorer(tfr.keras.model.UnivariateScorer):
    """A user's scorer: one small hidden layer over the example features."""

    def __init__(self, units: int = 4):
        self.units = units

    def _score_flattened(self, context_features, example_features):
        x = tf.concat([tf.keras.layers.Flatten()(example_features[n]) for n in sorted(example_features)], 1)
        return tf.keras.layers.Dense(1)(tf.keras.layers.Dense(self.units, activation="relu")(x))


class ExplodingScorer(tfr.keras.model.Scorer):
    """Fails while the model is being built, after the MLflow run has started."""

    def __call__(self, context_features, example_features, mask):
        raise RuntimeError("boom: this scorer always fails")


def clipping_preprocessor(feature_spec, limit: float = 3.0):
    """A user's preprocessor: clip every example feature to [-limit, limit]."""
    return tfr.keras.model.PreprocessorWithSpec(
        {name: (lambda t: tf.clip_by_value(tf.cast(t, tf.float32), -limit, limit)) for name in feature_spec.example_names})


class WrappedKerasModel(tfr.keras.model.AbstractModelBuilder):
    """The TF Ranking FAQ's pattern: an existing Keras model wrapped as a ranking model."""

    def __init__(self, feature_spec, units: int = 8):
        self.spec, self.units = feature_spec, units

    def build(self) -> tf.keras.Model:
        inputs = {f.name: tf.keras.Input(shape=(None, *f.shape), name=f.name) for f in self.spec.example}
        inputs[self.spec.mask_name] = tf.keras.Input(shape=(None,), dtype=tf.bool, name=self.spec.mask_name)
        existing = tf.keras.Sequential([tf.keras.layers.Dense(self.units, activation="relu"), tf.keras.layers.Dense(1)])
        x = tf.concat([tf.math.log1p(tf.abs(inputs[n])) for n in self.spec.example_names], axis=-1)
        scores = tf.squeeze(existing(x), axis=-1)
        return tf.keras.Model(inputs=inputs, outputs=scores, name="wrapped")


NOT_CALLABLE = 3


def scorer_failing_on_worker(index: int = 1, units: int = 4):
    """A scorer that fails on one worker of a multi-worker run only (the others go on and would
    wait for it): for the launcher's stop-the-others path."""
    import json
    import os

    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    if task.get("index") == index:
        raise RuntimeError(f"boom on worker {index}")
    return TinyScorer(units)
