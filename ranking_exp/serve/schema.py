"""Request validation, derived from the model's FeatureSpec, into dense NumPy arrays.

Every message names where the problem is (``queries[1].documents[3]: feature 'bm25': ...``) so a
client can fix its request; nothing here lists feature names of its own. Rules, for every
request format:

- a feature the spec does not have: 422;
- a missing feature: the spec's default if it has one, else 422 (required);
- a value that is not a number (a string, ``true``, ``null``), NaN or infinite, out of the
  feature dtype's range, or (int64 features) not a whole number: 422;
- a feature of shape ``[k]`` takes a list of ``k`` numbers (a number alone where ``k`` is 1);
- an empty document list: 422; more documents than ``max_documents`` in one list, or more
  queries than ``max_queries`` in one request: 413.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ranking_exp.data.spec import Feature, FeatureSpec

class _Missing:
    """The type of the marker for a feature a document does not have."""


_MISSING = _Missing()
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class RequestError(Exception):
    """A bad request: ``status`` (400, 404, 413, 422) and a message for the JSON error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class Query:
    """One list to score: context values ``[*shape]``, example values ``[n, *shape]``, mask ``[n]``."""

    context: dict[str, np.ndarray]
    examples: dict[str, np.ndarray]
    size: int
    mask: np.ndarray | None = None  # None: all documents are real


def _describe(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(v: Any, f: Feature, where: str) -> float | int:
    """One number for feature ``f``, or a RequestError saying what is wrong with it."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RequestError(422, f"{where}: feature {f.name!r}: value {_describe(v)} is not a number")
    if isinstance(v, float) and not math.isfinite(v):
        raise RequestError(422, f"{where}: feature {f.name!r}: value {v} is not a finite number")
    if f.dtype == "float32":
        if abs(v) > _FLOAT32_MAX:
            raise RequestError(422, f"{where}: feature {f.name!r}: value {_describe(v)} is out of float32 range")
        return float(v)
    if isinstance(v, float) and not v.is_integer():
        raise RequestError(422, f"{where}: feature {f.name!r}: value {v} is not a whole number (int64 feature)")
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise RequestError(422, f"{where}: feature {f.name!r}: value {_describe(v)} is out of int64 range")
    return int(v)


def _flatten(v: Any, f: Feature, where: str) -> list:
    """The ``f.size`` values of one feature value: a number (size 1), a flat or a nested list."""
    if f.size == 1 and not isinstance(v, list):
        return [v]
    if not isinstance(v, list):
        raise RequestError(422, f"{where}: feature {f.name!r}: expected a list of {f.size} numbers "
                                f"(shape {list(f.shape)}), got {_describe(v)}")
    flat, stack = [], [v]
    while stack:  # nested lists, in order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if len(flat) != f.size:
        raise RequestError(422, f"{where}: feature {f.name!r}: expected {f.size} values (shape {list(f.shape)}), "
                                f"got {len(flat)}")
    return flat


def _column(values: Sequence[Any], f: Feature, where: str) -> np.ndarray:
    """``[n, *f.shape]`` array of one feature over ``n`` documents (``where`` has ``{i}`` for the index).

    ``values`` holds ``_MISSING`` where a document lacks the feature.
    """
    n = len(values)
    dtype = np.float32 if f.dtype == "float32" else np.int64
    if f.size == 1:
        kinds = set(map(type, values))
        if _Missing in kinds:
            if f.default is None:
                i = next(i for i, v in enumerate(values) if v is _MISSING)
                raise RequestError(422, f"{where.format(i=i)}: missing required feature {f.name!r}")
            default = f.default if f.dtype == "float32" else int(f.default)
            values = [default if v is _MISSING else v for v in values]
            kinds = set(map(type, values))
        fast = {float, int} if f.dtype == "float32" else {int}
        if kinds <= fast:  # the common case: plain numbers, checked in bulk
            try:
                wide = np.array(values, dtype=np.float64 if f.dtype == "float32" else np.int64)
            except OverflowError:
                wide = None
            if wide is not None and (f.dtype != "float32" or np.all(np.abs(wide) <= _FLOAT32_MAX)):
                return wide.astype(dtype, copy=False).reshape(n, *f.shape)
    out = np.empty((n, f.size), dtype=dtype)
    for i, v in enumerate(values):
        here = where.format(i=i)
        if v is _MISSING:
            if f.default is None:
                raise RequestError(422, f"{here}: missing required feature {f.name!r}")
            out[i] = f.default
            continue
        out[i] = [_check_value(x, f, here) for x in _flatten(v, f, here)]
    return out.reshape(n, *f.shape)


class RequestParser:
    """Turns decoded JSON requests into :class:`Query` objects for one model's FeatureSpec."""

    def __init__(self, spec: FeatureSpec, max_documents: int = 1000, max_queries: int = 100):
        self.spec = spec
        self.max_documents = max_documents
        self.max_queries = max_queries
        self._context = {f.name: f for f in spec.context}
        self._example = {f.name: f for f in spec.example}
        self._example_names = frozenset(self._example)
        self._defaults = {f.name: self._default_array(f, where="context")
                          for f in spec.context if f.default is not None}

    @staticmethod
    def _default_array(f: Feature, where: str) -> np.ndarray:
        dtype = np.float32 if f.dtype == "float32" else np.int64
        return np.full(f.shape, f.default, dtype=dtype)

    # --- messages ------------------------------------------------------------------------
    def _unknown(self, name: str, where: str, documents: bool) -> RequestError:
        if documents and name in self._context:
            return RequestError(422, f"{where}: {name!r} is a context feature: send it in \"context\"")
        if not documents and name in self._example:
            return RequestError(422, f"{where}: {name!r} is a document feature: send it in each document")
        names = list(self._example if documents else self._context)
        listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        kind = "document" if documents else "context"
        return RequestError(422, f"{where}: unknown feature {name!r} (the model's {kind} features: "
                                 f"{listed or 'none'})")

    def _check_size(self, n: int, where: str) -> None:
        if n == 0:
            raise RequestError(422, f"{where}: empty document list (send at least one document)")
        if n > self.max_documents:
            raise RequestError(413, f"{where}: {n} documents, more than the maximum of {self.max_documents}")

    def _check_queries(self, n: int, where: str) -> None:
        if n == 0:
            raise RequestError(422, f"{where}: empty list of queries")
        if n > self.max_queries:
            raise RequestError(413, f"{where}: {n} queries, more than the maximum of {self.max_queries}")

    # --- context -------------------------------------------------------------------------
    def _context_values(self, ctx: Any, where: str) -> dict[str, np.ndarray]:
        if ctx is None:
            ctx = {}
        if not isinstance(ctx, dict):
            raise RequestError(422, f"{where}: expected an object of context features, got {_describe(ctx)}")
        for name in ctx:
            if name not in self._context:
                raise self._unknown(name, where, documents=False)
        out = {}
        for f in self.spec.context:
            v = ctx.get(f.name, _MISSING)
            if v is _MISSING:
                if f.default is None:
                    raise RequestError(422, f"{where}: missing required context feature {f.name!r}")
                out[f.name] = self._defaults[f.name]
            else:
                out[f.name] = _column([v], f, where)[0]
        return out

    # --- /v1/rank --------------------------------------------------------------------------
    def rank_request(self, body: Any) -> tuple[list[Query], bool]:
        """``{"context", "documents"}`` or ``{"queries": [...]}``; returns the queries and whether batched."""
        if not isinstance(body, dict):
            raise RequestError(422, f"body: expected a JSON object, got {_describe(body)}")
        if "queries" in body:
            extra = sorted(set(body) - {"queries"})
            if extra:
                raise RequestError(422, f"body: unexpected key {extra[0]!r} beside \"queries\"")
            queries = body["queries"]
            if not isinstance(queries, list):
                raise RequestError(422, f"queries: expected a list, got {_describe(queries)}")
            self._check_queries(len(queries), "queries")
            return [self.query(q, f"queries[{i}]") for i, q in enumerate(queries)], True
        return [self.query(body, "")], False

    def query(self, obj: Any, where: str) -> Query:
        dot = f"{where}." if where else ""
        if not isinstance(obj, dict):
            raise RequestError(422, f"{where or 'body'}: expected an object with \"documents\", got {_describe(obj)}")
        extra = sorted(set(obj) - {"context", "documents"})
        if extra:
            raise RequestError(422, f"{where or 'body'}: unexpected key {extra[0]!r} "
                                    f"(a query is {{\"context\": {{...}}, \"documents\": [...]}})")
        if "documents" not in obj:
            raise RequestError(422, f"{where or 'body'}: missing \"documents\"")
        docs = obj["documents"]
        if not isinstance(docs, list):
            raise RequestError(422, f"{dot}documents: expected a list of objects, got {_describe(docs)}")
        self._check_size(len(docs), f"{dot}documents")
        context = self._context_values(obj.get("context"), f"{dot}context")
        known = self._example_names
        for i, d in enumerate(docs):
            if not isinstance(d, dict):
                raise RequestError(422, f"{dot}documents[{i}]: expected an object of features, got {_describe(d)}")
            if not d.keys() <= known:
                name = next(k for k in d if k not in known)
                raise self._unknown(name, f"{dot}documents[{i}]", documents=True)
        examples = {}
        for f in self.spec.example:
            name = f.name
            values = [d.get(name, _MISSING) for d in docs]
            examples[name] = _column(values, f, f"{dot}documents[{{i}}]")
        return Query(context, examples, len(docs))

    # --- TensorFlow Serving style --------------------------------------------------------------
    def tf_request(self, body: Any) -> tuple[list[Query], str]:
        """``{"instances": [...]}`` (row format) or ``{"inputs": {...}}`` (columnar); returns the format."""
        if not isinstance(body, dict):
            raise RequestError(422, f"body: expected a JSON object, got {_describe(body)}")
        extra = sorted(set(body) - {"instances", "inputs", "signature_name"})
        if extra:
            raise RequestError(422, f"body: unexpected key {extra[0]!r}")
        signature = body.get("signature_name", "serving_features")
        if signature not in ("serving_features", "serving_default"):
            raise RequestError(422, f"signature_name: {_describe(signature)}: this endpoint serves "
                                    "'serving_features' (named feature tensors)")
        if ("instances" in body) == ("inputs" in body):
            raise RequestError(422, "body: send exactly one of \"instances\" (row format) or \"inputs\" (columnar)")
        if "instances" in body:
            rows = body["instances"]
            if not isinstance(rows, list):
                raise RequestError(422, f"instances: expected a list, got {_describe(rows)}")
            self._check_queries(len(rows), "instances")
            return [self.instance(r, f"instances[{i}]") for i, r in enumerate(rows)], "row"
        cols = body["inputs"]
        if not isinstance(cols, dict) or not cols:
            raise RequestError(422, f"inputs: expected an object of named tensors, got {_describe(cols)}")
        batch = None
        for name, v in cols.items():
            if not isinstance(v, list):
                raise RequestError(422, f"inputs.{name}: expected a list over the batch, got {_describe(v)}")
            if batch is None:
                batch = len(v)
            elif len(v) != batch:
                raise RequestError(422, f"inputs.{name}: batch size {len(v)} differs from {batch}")
        self._check_queries(batch, "inputs")
        return [self.instance({k: v[i] for k, v in cols.items()}, f"inputs[{i}]") for i in range(batch)], "columnar"

    def instance(self, row: Any, where: str) -> Query:
        """One query as named tensors: context ``[*shape]``, documents ``[list, *shape]``, optional mask ``[list]``."""
        spec = self.spec
        if not isinstance(row, dict):
            raise RequestError(422, f"{where}: expected an object of named input tensors, got {_describe(row)}")
        for name in row:
            if name not in self._context and name not in self._example and name != spec.mask_name:
                raise RequestError(422, f"{where}: unknown input {name!r} (inputs: "
                                        f"{', '.join([*self._context, *self._example, spec.mask_name])})")
        sizes = {}
        for name, v in row.items():
            if name in self._example or name == spec.mask_name:
                if not isinstance(v, list):
                    raise RequestError(422, f"{where}.{name}: expected a list over documents, got {_describe(v)}")
                sizes[name] = len(v)
        if not sizes:
            raise RequestError(422, f"{where}: no document features (and no {spec.mask_name!r})")
        n = next(iter(sizes.values()))
        for name, m in sizes.items():
            if m != n:
                raise RequestError(422, f"{where}.{name}: {m} documents, but {next(iter(sizes))} has {n}")
        self._check_size(n, where)
        context = self._context_values({k: v for k, v in row.items() if k in self._context}, where)
        examples = {}
        for f in spec.example:
            values = row.get(f.name, [_MISSING] * n)
            examples[f.name] = _column(values, f, f"{where}.{f.name}[{{i}}]")
        mask = None
        if spec.mask_name in row:
            values = row[spec.mask_name]
            if not all(isinstance(v, bool) for v in values):
                raise RequestError(422, f"{where}.{spec.mask_name}: expected true/false per document")
            mask = np.array(values, dtype=bool)
        return Query(context, examples, n, mask)


def dense_batch(spec: FeatureSpec, queries: Sequence[Query]) -> dict[str, np.ndarray]:
    """The ``serving_features`` inputs of several queries, padded to the longest list."""
    width = max(q.size for q in queries)
    b = len(queries)
    inputs: dict[str, np.ndarray] = {}
    for f in spec.context:
        inputs[f.name] = np.stack([q.context[f.name] for q in queries])
    same = all(q.size == width for q in queries)
    for f in spec.example:
        if same:
            inputs[f.name] = np.stack([q.examples[f.name] for q in queries])
        else:
            dtype = np.float32 if f.dtype == "float32" else np.int64
            x = np.zeros((b, width, *f.shape), dtype=dtype)
            for i, q in enumerate(queries):
                x[i, : q.size] = q.examples[f.name]
            inputs[f.name] = x
    mask = np.zeros((b, width), dtype=bool)
    for i, q in enumerate(queries):
        mask[i, : q.size] = True if q.mask is None else q.mask
    inputs[spec.mask_name] = mask
    return inputs
