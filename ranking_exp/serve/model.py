"""The served model: resolve (path or MLflow URI), load, check, warm up, describe.

A model that cannot be served raises ConfigError with one line (``model: ...``), so the server
refuses to start instead of failing on the first request.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ranking_exp.data.spec import FeatureSpec, SpecError
from ranking_exp.errors import ConfigError
from ranking_exp.serve.schema import Query, dense_batch

SIGNATURE = "serving_features"
OUTPUT_KEY = "outputs"


def is_mlflow_uri(model: str) -> bool:
    return ":" in model and not Path(model).exists()


def default_name(model: str, source: dict[str, Any], model_dir: Path) -> str:
    """The registered model's name, else the URI's or directory's last part, made URL-safe."""
    if source.get("registered_model"):
        name = str(source["registered_model"])
    elif is_mlflow_uri(model):
        name = model.rstrip("/").rsplit("/", 1)[-1]  # runs:/ID/model -> model
    else:
        name = Path(model).resolve().name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    return name or "model"


def describe_source(model: str, model_dir: Path, tracking_uri: str, launch_dir: str) -> dict[str, Any]:
    """Where the model comes from: its URI, MLflow run, registered name and version when known."""
    source: dict[str, Any] = {"model": model, "path": str(model_dir)}
    if is_mlflow_uri(model):
        from ranking_exp.tracking import model_source

        try:
            source.update(model_source(model, tracking_uri, launch_dir))
        except Exception:  # metadata only: the model itself was found and loads
            pass
    else:  # an export dir inside a run dir: outputs/DATE/TIME/export/NAME, results.json two levels up
        results = model_dir.resolve().parent.parent / "results.json"
        try:
            run_id = json.loads(results.read_text()).get("run_id")
            if run_id:
                source["run_id"] = run_id
        except (OSError, ValueError):
            pass
    return source


class ServedModel:
    """The ``serving_features`` function of a ranking_exp export, with its FeatureSpec."""

    def __init__(self, model_dir: Path, name: str, source: dict[str, Any] | None = None):
        self.model_dir = Path(model_dir)
        self.name = name
        self.source = dict(source or {})
        self.version = str(self.source.get("version") or 1)
        try:
            self.spec = FeatureSpec.load(self.model_dir)
        except SpecError as e:
            raise ConfigError(f"model: {e}") from None
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(self.model_dir))
        except Exception as e:  # a corrupt or foreign SavedModel
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model: {self.model_dir}: cannot load the SavedModel ({first})") from None
        if SIGNATURE not in loaded.signatures:
            raise ConfigError(f"model: {self.model_dir}: no {SIGNATURE!r} signature "
                              f"(has {', '.join(sorted(loaded.signatures)) or 'none'}): not a ranking_exp export")
        self._loaded = loaded  # keeps the variables alive
        self._fn = loaded.signatures[SIGNATURE]
        expected = {f.name for f in self.spec.context + self.spec.example} | {self.spec.mask_name}
        inputs = set(self._fn.structured_input_signature[1])
        if inputs != expected:
            raise ConfigError(f"model: {self.model_dir}: the {SIGNATURE!r} inputs {sorted(inputs)} do not match "
                              f"feature_spec.json {sorted(expected)}")
        self._tf = tf
        self.warmup_seconds = 0.0

    def score_dense(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """``[batch, list]`` scores for ``serving_features`` inputs."""
        tf = self._tf
        return self._fn(**{k: tf.constant(v) for k, v in inputs.items()})[OUTPUT_KEY].numpy()

    def score(self, queries: Sequence[Query], max_batch: int | None = None) -> list[np.ndarray]:
        """One score array per query (its own length), in chunks of at most ``max_batch`` queries."""
        out: list[np.ndarray] = []
        step = max_batch or len(queries)
        for start in range(0, len(queries), step):
            chunk = queries[start:start + step]
            scores = self.score_dense(dense_batch(self.spec, chunk))
            out.extend(scores[i, : q.size] for i, q in enumerate(chunk))
        return out

    def warm_up(self, max_batch: int, max_documents: int) -> None:
        """Scores default-valued lists once per shape class, so the first request is not the slow one."""
        t0 = time.perf_counter()
        for batch, width in ((1, 1), (1, min(100, max_documents)), (max_batch, min(100, max_documents))):
            inputs = {}
            for f in self.spec.context:
                inputs[f.name] = np.full((batch, *f.shape), f.default or 0,
                                         dtype=np.float32 if f.dtype == "float32" else np.int64)
            for f in self.spec.example:
                inputs[f.name] = np.full((batch, width, *f.shape), f.default or 0,
                                         dtype=np.float32 if f.dtype == "float32" else np.int64)
            inputs[self.spec.mask_name] = np.ones((batch, width), dtype=bool)
            scores = self.score_dense(inputs)
            if scores.shape != (batch, width):
                raise ConfigError(f"model: {self.model_dir}: {SIGNATURE!r} returned shape {list(scores.shape)} "
                                  f"for {batch} lists of {width}, expected [{batch}, {width}]")
        self.warmup_seconds = time.perf_counter() - t0

    def metadata(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "feature_spec": spec.to_dict(),
            "signature": {
                "name": SIGNATURE,
                "inputs": {
                    **{f.name: {"dtype": f.dtype, "shape": [-1, *f.shape]} for f in spec.context},
                    **{f.name: {"dtype": f.dtype, "shape": [-1, -1, *f.shape]} for f in spec.example},
                    spec.mask_name: {"dtype": "bool", "shape": [-1, -1]},
                },
                "outputs": {OUTPUT_KEY: {"dtype": "float32", "shape": [-1, -1]}},
            },
            # TensorFlow Serving's model status, for clients that poll it.
            "model_version_status": [{"version": self.version, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}],
        }
