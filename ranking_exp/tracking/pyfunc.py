"""MLflow pyfunc ranker (models-from-code: MLflow stores this file, not a pickle).

Input: a DataFrame with one row per document; an optional ``qid`` column groups rows into
queries (all rows are one query without it); other columns are the features named in the
exported ``feature_spec.json`` (context features are read from a query's first row; absent
features take the spec's default). Output: ``score`` and ``rank`` (1 = best within its query)
per input row, in input order. Self-contained on purpose: it needs TensorFlow, NumPy and
pandas, not ranking_exp, so ``mlflow models serve`` can load it anywhere.
"""
from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd

QID_COLUMN = "qid"


class RankingModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import tensorflow as tf

        path = context.artifacts["saved_model"]
        with open(os.path.join(path, "feature_spec.json")) as f:
            self.spec = json.load(f)
        self.fn = tf.saved_model.load(path).signatures["serving_features"]

    def _column(self, df: pd.DataFrame, feature: dict) -> np.ndarray:
        name, dtype = feature["name"], np.float32 if feature["dtype"] == "float32" else np.int64
        if name in df.columns:
            values = df[name].to_numpy()
        elif feature["default"] is not None:
            values = np.full(len(df), feature["default"])
        else:
            raise ValueError(f"missing required feature column {name!r}")
        return np.asarray(values, dtype=dtype).reshape(len(df), *feature["shape"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import tensorflow as tf

        df = model_input.reset_index(drop=True)
        known = {f["name"] for f in self.spec["context"] + self.spec["example"]} | {QID_COLUMN}
        unknown = sorted(set(df.columns) - known)
        if unknown:
            raise ValueError(f"unknown feature column(s): {', '.join(map(str, unknown))}")
        qids = df[QID_COLUMN].to_numpy() if QID_COLUMN in df.columns else np.zeros(len(df))
        _, group = np.unique(qids, return_inverse=True)  # query index of each row
        n_lists = int(group.max()) + 1 if len(df) else 0
        position = np.zeros(len(df), dtype=np.int64)
        counts = np.zeros(n_lists, dtype=np.int64)
        for i, g in enumerate(group):
            position[i] = counts[g]
            counts[g] += 1
        width = int(counts.max()) if len(df) else 0
        inputs = {}
        for f in self.spec["example"]:
            col = self._column(df, f)
            dense = np.zeros((n_lists, width, *col.shape[1:]), dtype=col.dtype)
            dense[group, position] = col
            inputs[f["name"]] = tf.constant(dense)
        first_row = np.full(n_lists, -1)
        for i in range(len(df) - 1, -1, -1):
            first_row[group[i]] = i
        for f in self.spec["context"]:
            inputs[f["name"]] = tf.constant(self._column(df, f)[first_row])
        mask = np.zeros((n_lists, width), dtype=bool)
        mask[group, position] = True
        inputs[self.spec["mask_name"]] = tf.constant(mask)
        scores = self.fn(**inputs)["outputs"].numpy()[group, position]
        ranks = pd.Series(scores).groupby(group).rank(ascending=False, method="first").astype(int)
        return pd.DataFrame({"score": scores, "rank": ranks.to_numpy()})


mlflow.models.set_model(RankingModel())
