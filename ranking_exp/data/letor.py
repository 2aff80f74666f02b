"""Streaming reader for LibSVM / LETOR ranking text (``label qid:Q i:v ... # comment``).

Converted data is only as good as its input, so every malformed line is rejected here,
once, with a ``FILE:LINE:`` message the user can act on. The reader streams one query at a
time (memory grows with one query and the set of qids seen, not with file size). Lines are
parsed with ``bytes.split`` and one C-level pattern check per line, and values are checked
per query with numpy, so MQ2008-sized files take well under a second. No TensorFlow here.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ranking_exp.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# The well-formed shape of a line's feature part; anything else goes to _diagnose.
_PAIRS = re.compile(rb"(?:[0-9]+:[^\s:_]+\s+)*(?:[0-9]+:[^\s:_]+)?\s*")


@dataclasses.dataclass
class Query:
    """One query's documents in file order, features in CSR form (absent features are 0).

    Document ``d`` has the features ``indices[offsets[d]:offsets[d+1]]`` (1-based LETOR
    feature indices, int64) with ``values[...]`` (float32), in the order its line gave
    them; ``lines[d]`` is its line number.
    """

    qid: str
    first_line: int
    labels: np.ndarray
    offsets: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    lines: np.ndarray

    @property
    def num_docs(self) -> int:
        return len(self.labels)

    @property
    def features(self) -> list[dict[int, float]]:
        """Per-document ``{feature index: value}`` (a convenience view, slower)."""
        o = self.offsets
        return [dict(zip(self.indices[o[d]:o[d + 1]].tolist(), self.values[o[d]:o[d + 1]].tolist()))
                for d in range(self.num_docs)]

    def dense(self, feature_indices) -> tuple[np.ndarray, np.ndarray]:
        """``(values, present)``: float32 / bool arrays (num_docs, len(feature_indices)).

        Column ``j`` holds feature ``feature_indices[j]``; features not listed are dropped.
        """
        order = np.asarray(feature_indices, dtype=np.int64)
        size = int(max(order.max(initial=0), self.indices.max(initial=0))) + 1
        lookup = np.full(size, -1, dtype=np.int64)
        lookup[order] = np.arange(len(order))
        rows = np.repeat(np.arange(self.num_docs), np.diff(self.offsets))
        cols = lookup[self.indices]
        keep = cols >= 0
        values = np.zeros((self.num_docs, len(order)), dtype=np.float32)
        present = np.zeros((self.num_docs, len(order)), dtype=bool)
        values[rows[keep], cols[keep]] = self.values[keep]
        present[rows[keep], cols[keep]] = True
        return values, present


def is_gzip(path: str | Path) -> bool:
    """By suffix or, failing that, by the two gzip magic bytes."""
    path = Path(path)
    if path.suffix == ".gz":
        return True
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def read_letor(
    path: str | Path,
    allowed_features: set[int] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Query]:
    """Yields the queries of a ``.txt`` / ``.txt.gz`` LETOR file, in file order.

    ``allowed_features``: the feature indices accepted (vali/test may only use features
    seen in train); any other is a DataError. ``on_bytes(n)`` is called as ``n`` more bytes
    of the (compressed) file are consumed, for progress bars. Raises DataError at the first
    bad line, so a consumer may already have seen the queries before it.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a LETOR file")
    allowed = None if allowed_features is None else np.array(sorted(allowed_features), dtype=np.int64)
    with open(path, "rb") as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(path) else raw
        yield from _Parser(path, allowed).run(stream, raw, on_bytes)


class _Parser:
    def __init__(self, path: Path, allowed: np.ndarray | None):
        self.path = path
        self.allowed = allowed

    def run(self, stream: BinaryIO, raw: BinaryIO, on_bytes) -> Iterator[Query]:
        path = self.path
        finished: dict[str, int] = {}  # qid -> first line, for queries already yielded
        qid: str | None = None
        first_line = 0
        labels: list[float] = []
        lines: list[int] = []
        offsets: list[int] = [0]
        idx: list[int] = []
        val: list[float] = []
        reported = 0
        any_line = False
        for lineno, line in _lines(path, stream):
            if on_bytes is not None and lineno % 2048 == 0:
                pos = raw.tell()
                on_bytes(pos - reported)
                reported = pos
            tokens = line.split(b"#", 1)[0].split(None, 2)
            if not tokens:
                continue
            any_line = True
            if len(tokens) < 2 or not tokens[1].startswith(b"qid:") or len(tokens[1]) == 4:
                raise DataError(f"{path}:{lineno}: expected 'LABEL qid:QID INDEX:VALUE ...', found no qid: field")
            line_qid = tokens[1][4:].decode("utf-8", "replace")
            if line_qid != qid:
                if qid is not None:
                    finished[qid] = first_line
                    yield self._query(qid, first_line, labels, lines, offsets, idx, val)
                if line_qid in finished:
                    raise DataError(
                        f"{path}:{lineno}: lines of qid {line_qid} are not contiguous "
                        f"(it first appeared at line {finished[line_qid]}, other qids came between)")
                qid, first_line, labels, lines, offsets, idx, val = line_qid, lineno, [], [], [0], [], []
            labels.append(_number(f"{path}:{lineno}", tokens[0], "label"))
            lines.append(lineno)
            if len(tokens) == 3:
                rest = tokens[2]
                if _PAIRS.fullmatch(rest) is None:
                    _diagnose(f"{path}:{lineno}", rest.split())
                parts = rest.replace(b":", b" ").split()
                try:
                    idx.extend(map(int, parts[0::2]))
                    val.extend(map(float, parts[1::2]))
                except ValueError:
                    _diagnose(f"{path}:{lineno}", rest.split())
            offsets.append(len(idx))
        if qid is not None:
            yield self._query(qid, first_line, labels, lines, offsets, idx, val)
        if on_bytes is not None:
            on_bytes(raw.tell() - reported)
        if not any_line:
            raise DataError(f"{path}: empty file (no ranking lines)")

    def _query(self, qid, first_line, labels, lines, offsets, idx, val) -> Query:
        """Builds a Query, checking labels and features of all its lines at once."""
        q = Query(
            qid=qid,
            first_line=first_line,
            labels=np.array(labels, dtype=np.float64),
            offsets=np.array(offsets, dtype=np.int64),
            indices=np.array(idx, dtype=np.int64),
            values=np.array(val, dtype=np.float64),
            lines=np.array(lines, dtype=np.int64),
        )
        self._check(q)
        q.labels = q.labels.astype(np.float32)
        q.values = q.values.astype(np.float32)
        return q

    def _check(self, q: Query) -> None:
        def where(pos: int) -> str:  # position in indices/values -> "file:line"
            doc = int(np.searchsorted(q.offsets, pos, side="right")) - 1
            return f"{self.path}:{int(q.lines[doc])}"

        bad = np.flatnonzero(q.labels < 0)
        if len(bad):
            d = int(bad[0])
            raise DataError(f"{self.path}:{int(q.lines[d])}: label {_fmt(q.labels[d])} is negative "
                            "(TF Ranking treats labels < 0 as padding)")
        if not len(q.indices):
            return
        bad = np.flatnonzero(q.indices <= 0)
        if len(bad):
            raise DataError(f"{where(int(bad[0]))}: feature index {int(q.indices[bad[0]])} "
                            "must be a positive integer (indices start at 1)")
        bad = np.flatnonzero(~(np.abs(q.values) <= _FLOAT32_MAX))
        if len(bad):
            j = int(bad[0])
            what = "is not finite" if not np.isfinite(q.values[j]) else "overflows float32"
            raise DataError(f"{where(j)}: feature {int(q.indices[j])} value {_fmt(q.values[j])} {what}")
        # Duplicates within a line: sort by (doc, index) and look for equal neighbours.
        doc_of = np.repeat(np.arange(q.num_docs), np.diff(q.offsets))
        key = doc_of * (int(q.indices.max()) + 1) + q.indices
        if len(key) > 1 and not (np.diff(key) > 0).all():
            order = np.argsort(key, kind="stable")
            dup = np.flatnonzero(np.diff(key[order]) == 0)
            if len(dup):
                j = int(order[dup[0] + 1])
                raise DataError(f"{where(j)}: feature {int(q.indices[j])} given twice")
        if self.allowed is not None:
            bad = np.flatnonzero(~np.isin(q.indices, self.allowed))
            if len(bad):
                j = int(bad[0])
                raise DataError(f"{where(j)}: feature {int(q.indices[j])} is not in the training data")


def _lines(path: Path, stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Numbered lines (1-based); a corrupt gzip stream becomes a DataError."""
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):
            yield lineno, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}:{lineno + 1}: unreadable gzip data ({msg})") from None


def _number(where: str, token: bytes, what: str) -> float:
    try:
        if b"_" in token:  # Python's float() accepts "1_0"; LibSVM readers do not
            raise ValueError
        x = float(token)
    except ValueError:
        raise DataError(f"{where}: {what} {_show(token)} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: {what} {_show(token)} is not finite")
    return x


def _diagnose(where: str, pairs: list[bytes]) -> None:
    """Reports the first bad ``INDEX:VALUE`` token of a line that failed the fast path."""
    for t in pairs:
        parts = t.split(b":")
        if len(parts) != 2:
            raise DataError(f"{where}: {_show(t)} is not INDEX:VALUE")
        k, v = parts
        try:
            if b"_" in k:
                raise ValueError
            index = int(k)
        except ValueError:
            raise DataError(f"{where}: feature index {_show(k)} is not an integer") from None
        if index <= 0:
            raise DataError(f"{where}: feature index {index} must be a positive integer (indices start at 1)")
        if not k.isdigit():  # "+1", " 1": accepted by int(), not by LibSVM
            raise DataError(f"{where}: feature index {_show(k)} must be written with digits only")
        _number(where, v, f"feature {index} value")
    raise DataError(f"{where}: malformed feature list")  # not reached for any known input


def _fmt(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else str(x)


def _show(token: bytes) -> str:
    text = token.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")
