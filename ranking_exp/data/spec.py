"""FeatureSpec: the one definition of a data set's features.

Model inputs, the ELWC parsing specs used for training, the serving request schema and
the ``feature_spec.json`` stored beside converted data and every exported model all come
from this object, so they cannot drift apart. Nothing else in the project lists feature
names. TensorFlow is imported lazily so that configs can be checked before it loads.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

SPEC_FILE = "feature_spec.json"
SPEC_VERSION = 1
DTYPES = ("float32", "int64")
PADDING_LABEL = -1.0


class SpecError(ValueError):
    """A feature spec (file or config) is malformed."""


@dataclasses.dataclass(frozen=True)
class Feature:
    """One dense feature: ``shape`` values per list (context) or per document (example).

    ``default`` fills the value when a record or a request omits the feature;
    ``None`` means the feature is required.
    """

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] = (1,)
    default: float | None = 0.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "a").replace(".", "a").isalnum():
            raise SpecError(f"feature name {self.name!r}: use letters, digits, '_' or '.'")
        if self.dtype not in DTYPES:
            raise SpecError(f"feature {self.name}: dtype {self.dtype!r} not in {DTYPES}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not self.shape or any(d <= 0 for d in self.shape):
            raise SpecError(f"feature {self.name}: shape {self.shape} must be positive")
        if self.default is not None and not math.isfinite(float(self.default)):
            raise SpecError(f"feature {self.name}: default must be finite")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def tf_dtype(self):
        import tensorflow as tf

        return tf.float32 if self.dtype == "float32" else tf.int64

    def parsing_spec(self):
        """The ``tf.io.FixedLenFeature`` used to parse this feature from ELWC / tf.Example."""
        import tensorflow as tf

        default = None
        if self.default is not None:
            value = float(self.default) if self.dtype == "float32" else int(self.default)
            default = [value] * self.size
        return tf.io.FixedLenFeature(shape=self.shape, dtype=self.tf_dtype(), default_value=default)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "default": self.default}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Feature:
        unknown = set(d) - {"name", "dtype", "shape", "default"}
        if unknown:
            raise SpecError(f"feature {d.get('name')!r}: unknown keys {sorted(unknown)}")
        return cls(
            name=str(d["name"]),
            dtype=d.get("dtype", "float32"),
            shape=tuple(d.get("shape", (1,))),
            default=d.get("default", 0.0),
        )


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Context (per list) and example (per document) features, the label and the mask name."""

    context: tuple[Feature, ...]
    example: tuple[Feature, ...]
    label: Feature = Feature("relevance", "float32", (1,), PADDING_LABEL)
    mask_name: str = "example_list_mask"

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", tuple(self.context))
        object.__setattr__(self, "example", tuple(self.example))
        if not self.example:
            raise SpecError("feature spec has no example features")
        names = [f.name for f in self.context + self.example] + [self.label.name, self.mask_name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"feature spec: names used twice: {dupes}")
        if self.label.shape != (1,):
            raise SpecError(f"label {self.label.name}: shape must be [1]")

    # --- names -----------------------------------------------------------------------
    @property
    def context_names(self) -> list[str]:
        return [f.name for f in self.context]

    @property
    def example_names(self) -> list[str]:
        return [f.name for f in self.example]

    def feature(self, name: str) -> Feature:
        for f in self.context + self.example:
            if f.name == name:
                return f
        raise KeyError(name)

    # --- TensorFlow views ------------------------------------------------------------
    def context_parsing_spec(self) -> dict:
        return {f.name: f.parsing_spec() for f in self.context}

    def example_parsing_spec(self) -> dict:
        return {f.name: f.parsing_spec() for f in self.example}

    def label_parsing_spec(self) -> tuple:
        """``(name, FixedLenFeature)``, as TF Ranking's dataset builders take it."""
        return self.label.name, self.label.parsing_spec()

    # --- serving ---------------------------------------------------------------------
    def request_schema(self) -> dict[str, Any]:
        """JSON Schema of one ranking request: ``{"context": {...}, "documents": [{...}]}``."""

        def props(features):
            out = {}
            for f in features:
                item = {"type": "number"} if f.dtype == "float32" else {"type": "integer"}
                if f.size > 1:
                    item = {"type": "array", "items": item, "minItems": f.size, "maxItems": f.size}
                if f.default is not None:
                    item["default"] = f.default
                out[f.name] = item
            return out

        def required(features):
            return [f.name for f in features if f.default is None]

        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "context": {
                    "type": "object",
                    "properties": props(self.context),
                    "required": required(self.context),
                    "additionalProperties": False,
                },
                "documents": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": props(self.example),
                        "required": required(self.example),
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["documents"],
        }

    # --- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "context": [f.to_dict() for f in self.context],
            "example": [f.to_dict() for f in self.example],
            "label": self.label.to_dict(),
            "mask_name": self.mask_name,
            "request_schema": self.request_schema(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        try:
            label = Feature.from_dict(d["label"]) if "label" in d else cls.label
            return cls(
                context=tuple(Feature.from_dict(f) for f in d.get("context", [])),
                example=tuple(Feature.from_dict(f) for f in d["example"]),
                label=label,
                mask_name=d.get("mask_name", "example_list_mask"),
            )
        except KeyError as e:
            raise SpecError(f"feature spec: missing key {e}") from None
        except TypeError as e:
            raise SpecError(f"feature spec: {e}") from None

    def save(self, directory: str | Path) -> Path:
        """Writes ``feature_spec.json`` into ``directory`` (atomically)."""
        path = Path(directory) / SPEC_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """Reads a spec from a ``feature_spec.json`` file or a directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise SpecError(f"{path}: no feature spec found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        try:
            return cls.from_dict(data)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None
