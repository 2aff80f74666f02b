"""Serving signatures of an exported ranker, all derived from the FeatureSpec.

TF Ranking's own: ``serving_default`` and ``tensorflow/serving/regress`` take serialized
``tf.Example`` (one document each, context features included), ``tensorflow/serving/predict``
takes serialized ``ExampleListWithContext``. We add ``serving_features``: plain tensors, context
features ``[batch, ...]``, example features ``[batch, list, ...]`` and the boolean mask
``[batch, list]`` — for callers (our HTTP server, MLflow pyfunc) that already hold numbers.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.data.spec import FeatureSpec

FEATURES_SIGNATURE = "serving_features"
OUTPUT_KEY = "outputs"


class RankingSignatures(tfr.keras.saved_model.Signatures):
    def __init__(self, model: tf.keras.Model, spec: FeatureSpec):
        super().__init__(model, context_feature_spec=spec.context_parsing_spec(),
                         example_feature_spec=spec.example_parsing_spec(), mask_feature_name=spec.mask_name)
        self._spec = spec

    def features_tf_function(self):
        spec = self._spec
        signature = {f.name: tf.TensorSpec([None, *f.shape], f.tf_dtype(), name=f.name) for f in spec.context}
        signature.update({f.name: tf.TensorSpec([None, None, *f.shape], f.tf_dtype(), name=f.name)
                          for f in spec.example})
        signature[spec.mask_name] = tf.TensorSpec([None, None], tf.bool, name=spec.mask_name)

        @tf.function(input_signature=[signature])
        def serving_features(features):
            return self.normalize_outputs(OUTPUT_KEY, self._model(inputs=features, training=False))

        return serving_features

    def __call__(self, serving_default: str = "regress"):
        # Same keys as TF Ranking's, but each function traced once (export time is mostly tracing).
        regress, predict = self.regress_tf_function(), self.predict_tf_function()
        return {
            tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY: regress if serving_default == "regress" else predict,
            tf.saved_model.REGRESS_METHOD_NAME: regress,
            tf.saved_model.PREDICT_METHOD_NAME: predict,
            FEATURES_SIGNATURE: self.features_tf_function(),
        }
