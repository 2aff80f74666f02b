"""ELWC TFRecord shards: writing, reading back, statistics, and the LETOR conversion.

Training reads ``ExampleListWithContext`` records (one query per record, TF Ranking's
native list format), so every data source is turned into such shards once and cached:

* ``ElwcWriter`` writes lists round-robin into ``{split}-{i:05d}-of-{n:05d}.tfrecord``
  shards and accumulates the training statistics that preprocessing needs.
* ``convert_letor`` converts a LETOR fold; ``build_cached`` gives it (and the synthetic
  generator) a content-addressed cache directory that only ever appears complete.
* ``open_elwc`` adopts existing shards without writing anything next to them.
* ``read_elwc`` / ``compute_stats`` parse shards with TF Ranking's own parser, so tests
  check exactly what training will see.

TF Ranking facts this module respects: labels < 0 mark padding (so real labels must be
>= 0), and the label's dtype in the spec must match the stored list type.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ranking_exp.data.letor import read_letor
from ranking_exp.data.prepared import METADATA_FILE, SPLITS, FeatureStats, PreparedData, SplitInfo
from ranking_exp.data.spec import Feature, FeatureSpec, SpecError
from ranking_exp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CONVERTER_VERSION = "letor-elwc/1"
SHARD_FORMAT = "{split}-{i:05d}-of-{n:05d}.tfrecord"


def shard_name(split: str, i: int, n: int) -> str:
    return SHARD_FORMAT.format(split=split, i=i, n=n)


# --------------------------------------------------------------------------------------
# Wire encoding
# --------------------------------------------------------------------------------------
# Building tf.train.Example protos field by field costs ~3 us per value in Python, which
# makes large LETOR sets take many minutes. A float feature's entry in an Example is a
# constant prefix (map-entry framing, key, FloatList framing) followed by its packed
# float32 bytes, so whole lists are encoded with numpy. The tests check the bytes parse
# to the same message protobuf builds, and round-trip through TF Ranking's parser.


def _varint(n: int) -> bytes:
    if 0 <= n < 0x4000:  # the common case: lengths of examples and entries
        return bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7))
    n &= (1 << 64) - 1  # negative int64 values take ten bytes, as in protobuf
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return bytes([tag << 3 | 2]) + _varint(len(payload)) + payload


def _entry(name: str, feature_bytes: bytes) -> bytes:
    """One ``Features.feature`` map entry, as a field of ``Features``."""
    return _field(1, _field(1, name.encode()) + _field(2, feature_bytes))


def _int64_feature(values: Iterable[int]) -> bytes:
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed))  # Feature.int64_list -> Int64List.value (packed)


class _Encoder:
    """Serializes rows of features (``tf.train.Example``s) for one list of Features."""

    def __init__(self, features: Sequence[Feature]):
        self.features = list(features)
        self.floats = [f for f in self.features if f.dtype == "float32"]
        self.ints = [f for f in self.features if f.dtype == "int64"]
        template = bytearray()
        value_cols: list[np.ndarray] = []
        owner: list[int] = []  # template byte -> index into self.floats
        for j, f in enumerate(self.floats):
            block = _entry(f.name, _field(2, _field(1, bytes(4 * f.size))))
            start = len(template)
            template += block
            owner += [j] * len(block)
            value_cols.append(np.arange(start + len(block) - 4 * f.size, start + len(block)))
        self.template = np.frombuffer(bytes(template), dtype=np.uint8)
        self.value_cols = np.concatenate(value_cols) if value_cols else np.zeros(0, dtype=np.int64)
        self.owner = np.asarray(owner, dtype=np.int64)

    def rows(self, float_values: np.ndarray, float_present: np.ndarray | None,
             int_values: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[bytes]:
        """``float_values``: (n, total float width) in ``self.floats`` order; ``float_present``:
        (n, len(self.floats)) bool or None (all present); ``int_values``: per int feature,
        ``(values (n, size), present (n,))``. Returns the serialized ``Example`` of each row."""
        n = float_values.shape[0]
        full = np.tile(self.template, (n, 1))
        if len(self.value_cols):
            full[:, self.value_cols] = np.ascontiguousarray(float_values, dtype="<f4").view(np.uint8)
        if float_present is None or float_present.all():
            payloads = [r.tobytes() for r in full]
        else:
            keep = float_present[:, self.owner]
            payloads = [full[d][keep[d]].tobytes() for d in range(n)]
        if self.ints:
            for d in range(n):
                payloads[d] += b"".join(_entry(f.name, _int64_feature(v[d].tolist()))
                                        for f, (v, p) in zip(self.ints, int_values) if p[d])
        return [_field(1, p) for p in payloads]  # Example.features


def _encode_list(context: bytes, examples: list[bytes]) -> bytes:
    """``ExampleListWithContext{examples = 1; context = 2}``."""
    return b"".join(_field(1, e) for e in examples) + _field(2, context)


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------
class StatsAccumulator:
    """Count, mean, population std, min and max per feature, merged batch by batch.

    Uses Chan et al.'s pairwise update in float64, which stays accurate for features with
    a large mean and a small spread (a plain sum of squares does not). A feature of shape
    ``(k,)`` pools its ``k`` values: ``count`` is the number of values.
    """

    def __init__(self, features: Sequence[Feature]):
        self.features = list(features)
        self.widths = [f.size for f in self.features]
        width = sum(self.widths)
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, rows: np.ndarray) -> None:
        """``rows``: (m, total width), features in order, absent values already filled."""
        rows = np.asarray(rows, dtype=np.float64)
        m = rows.shape[0]
        if m == 0 or rows.shape[1] == 0:
            self.n += m
            return
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        total = self.n + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * m / total)
        self.n = total
        self.min = np.minimum(self.min, rows.min(axis=0))
        self.max = np.maximum(self.max, rows.max(axis=0))

    def result(self) -> dict[str, FeatureStats]:
        out = {}
        start = 0
        for f, w in zip(self.features, self.widths):
            sl = slice(start, start + w)
            start += w
            if self.n == 0:
                out[f.name] = FeatureStats(0, 0.0, 0.0, 0.0, 0.0)
                continue
            means = self.mean[sl]
            mean = float(means.mean())
            m2 = float(self.m2[sl].sum() + self.n * ((means - mean) ** 2).sum())
            out[f.name] = FeatureStats(
                count=self.n * w,
                mean=mean,
                std=float(np.sqrt(max(m2, 0.0) / (self.n * w))),
                min=float(self.min[sl].min()),
                max=float(self.max[sl].max()),
            )
        return out


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
class ElwcWriter:
    """Writes one split's lists round-robin into ``num_shards`` ELWC TFRecord files.

    ``with_stats=True`` (the training split) accumulates statistics of every context
    feature over lists and of every example feature over real documents; read them from
    ``stats`` after ``close()``.
    """

    def __init__(self, spec: FeatureSpec, directory: str | Path, split: str, num_shards: int = 1,
                 with_stats: bool = False):
        import tensorflow as tf

        if num_shards < 1:
            raise ConfigError(f"num_shards: must be >= 1, got {num_shards}")
        self.spec = spec
        self.files = [str(Path(directory) / shard_name(split, i, num_shards)) for i in range(num_shards)]
        self._writers = [tf.io.TFRecordWriter(f) for f in self.files]
        self._example_features = list(spec.example) + [spec.label]
        self._context_enc = _Encoder(spec.context)
        self._example_enc = _Encoder(self._example_features)
        self._context_stats = StatsAccumulator(spec.context) if with_stats else None
        self._example_stats = StatsAccumulator(spec.example) if with_stats else None
        self.num_lists = 0
        self.num_docs = 0
        self.stats: dict[str, FeatureStats] | None = None

    def write(self, examples: Mapping[str, np.ndarray], labels: np.ndarray,
              context: Mapping[str, np.ndarray] | None = None,
              present: Mapping[str, np.ndarray] | None = None) -> None:
        """Writes one list.

        ``examples[name]``: (n,) or (n, *shape) per example feature; ``labels``: (n,);
        ``context[name]``: one value of the feature's shape. ``present[name]``: optional
        (n,) bool; absent documents omit the feature (parsing fills its default). A
        feature left out of ``examples`` / ``context`` is absent everywhere; that needs a
        default.
        """
        labels = np.asarray(labels).reshape(-1)
        n = len(labels)
        ex_values = dict(examples)
        ex_values[self.spec.label.name] = labels
        ex_present = dict(present or {})
        ctx_rows, ctx_present = self._columns(self.spec.context, dict(context or {}), {}, 1)
        ex_rows, ex_mask = self._columns(self._example_features, ex_values, ex_present, n)
        context_bytes = self._encode(self._context_enc, ctx_rows, ctx_present)[0]
        example_bytes = self._encode(self._example_enc, ex_rows, ex_mask)
        self._writers[self.num_lists % len(self._writers)].write(_encode_list(context_bytes, example_bytes))
        if self._example_stats is not None:
            self._context_stats.add(np.concatenate(ctx_rows, axis=1) if ctx_rows else np.zeros((1, 0)))
            self._example_stats.add(np.concatenate(ex_rows[:-1], axis=1))  # [:-1]: not the label
        self.num_lists += 1
        self.num_docs += n

    def _columns(self, features: Sequence[Feature], values: dict, present: dict, n: int):
        """Per feature: (n, size) values as stored (float32 rounded to float64, or int64;
        the default where absent) and (n,) presence."""
        rows, masks = [], []
        for f in features:
            v = values.pop(f.name, None)
            p = present.pop(f.name, None)
            stored = np.int64 if f.dtype == "int64" else np.float32
            default = stored(0 if f.default is None else f.default)
            if v is None:
                if f.default is None:
                    raise ValueError(f"feature {f.name} has no default and was not given")
                v, p = np.full((n, f.size), default), np.zeros(n, dtype=bool)
            else:
                v = np.asarray(v).reshape(n, f.size).astype(stored)
                p = np.ones(n, dtype=bool) if p is None else np.asarray(p, dtype=bool).reshape(n)
                if not p.all():
                    if f.default is None:
                        raise ValueError(f"feature {f.name} has no default but is absent in some rows")
                    v = np.where(p[:, None], v, default)
            rows.append(v if f.dtype == "int64" else v.astype(np.float64))
            masks.append(p)
        if values or present:
            raise ValueError(f"features not in the spec: {sorted(set(values) | set(present))}")
        return rows, masks

    def _encode(self, enc: _Encoder, rows: list[np.ndarray], masks: list[np.ndarray]) -> list[bytes]:
        by_name = {f.name: (r, m) for f, r, m in zip(enc.features, rows, masks)}
        n = rows[0].shape[0] if rows else 1
        float_rows = [by_name[f.name][0] for f in enc.floats]
        float_values = np.concatenate(float_rows, axis=1) if float_rows else np.zeros((n, 0))
        float_present = np.stack([by_name[f.name][1] for f in enc.floats], axis=1) if enc.floats else None
        ints = [by_name[f.name] for f in enc.ints]
        return enc.rows(float_values, float_present, ints)

    def close(self) -> SplitInfo:
        for w in self._writers:
            w.close()
        if self._example_stats is not None:
            self.stats = {**self._context_stats.result(), **self._example_stats.result()}
        return SplitInfo(files=list(self.files), num_lists=self.num_lists, num_docs=self.num_docs)

    def __enter__(self) -> ElwcWriter:
        return self

    def __exit__(self, *exc) -> None:
        for w in self._writers:
            w.close()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
def _batches(files: Sequence[str], spec: FeatureSpec, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Parsed batches from TF Ranking's ELWC parser, in file order then record order.

    A record that does not fit the spec (missing required feature, wrong dtype, not ELWC,
    corrupt file) becomes a DataError naming the file and the record.
    """
    import tensorflow as tf
    import tensorflow_ranking as tfr

    example_spec = {**spec.example_parsing_spec(), spec.label.name: spec.label.parsing_spec()}
    context_spec = spec.context_parsing_spec()

    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        return tfr.data.parse_from_example_list(
            serialized,
            context_feature_spec=context_spec,
            example_feature_spec=example_spec,
            mask_feature_name=spec.mask_name,
        )

    if any(f.default is None for f in spec.example):
        # TF Ranking pads short lists with empty examples, which fail a required feature;
        # one list per batch means no padding, so the check sees real documents only.
        batch_size = 1
    # One dataset over all files: tracing the parser per file would cost ~1 s each.
    ds = tf.data.TFRecordDataset(list(files)).batch(batch_size).map(parse).prefetch(2)
    start = 0
    try:
        for batch in ds.as_numpy_iterator():
            start += len(batch[spec.mask_name])
            yield batch
    except tf.errors.OpError as e:
        file, record = _locate(files, start)
        msg = _tf_message(e)
        hint = ""
        if spec.label.name in msg:
            hint = f" (is the label stored as {spec.label.dtype}, named '{spec.label.name}'?)"
        raise DataError(f"{file}: record {record} or one of the {batch_size - 1} after it: "
                        f"not ELWC matching the feature spec{hint}: {msg}") from None


def _tf_message(e: Exception) -> str:
    """TF's error text on one line, without graph node names and op decorations."""
    msg = str(getattr(e, "message", e))
    msg = re.sub(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\].*", " ", msg, flags=re.S)
    return " ".join(msg.split())[:300]


def _locate(files: Sequence[str], record: int) -> tuple[str, int]:
    """The file holding the ``record``-th record of ``files`` (or the first unreadable one)."""
    import tensorflow as tf

    offset = 0
    for f in files:
        try:
            n = sum(1 for _ in tf.data.TFRecordDataset([f]))
        except tf.errors.OpError:
            return f, max(record - offset, 0)
        if offset + n > record:
            return f, record - offset
        offset += n
    return files[-1], record


def read_elwc(files: Sequence[str | Path], spec: FeatureSpec, batch_size: int = 64
              ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]]:
    """Yields ``(context, examples, labels)`` per list, in file order then record order.

    ``context[name]`` has the feature's shape, ``examples[name]`` is (n_docs, *shape),
    ``labels`` is (n_docs,); absent features hold their parsing default.
    """
    for batch in _batches([str(f) for f in files], spec, batch_size):
        mask = batch[spec.mask_name]
        for b in range(mask.shape[0]):
            n = int(mask[b].sum())
            context = {f.name: batch[f.name][b] for f in spec.context}
            examples = {f.name: batch[f.name][b, :n] for f in spec.example}
            yield context, examples, batch[spec.label.name][b, :n].reshape(n)


def _scan(files: Sequence[str], spec: FeatureSpec, batch_size: int = 256):
    """Stats plus counts (lists, docs, docs with a real label >= 0) in one tf.data pass."""
    ctx_acc, ex_acc = StatsAccumulator(spec.context), StatsAccumulator(spec.example)
    lists = docs = labeled = 0
    for batch in _batches(files, spec, batch_size):
        mask = batch[spec.mask_name].astype(bool)
        lists += mask.shape[0]
        docs += int(mask.sum())
        labeled += int((batch[spec.label.name][mask] >= 0).sum())
        if spec.context:
            ctx_acc.add(np.concatenate([batch[f.name].reshape(mask.shape[0], f.size) for f in spec.context], axis=1))
        ex_acc.add(np.concatenate([batch[f.name][mask].reshape(-1, f.size) for f in spec.example], axis=1))
    return {**ctx_acc.result(), **ex_acc.result()}, lists, docs, labeled


def compute_stats(files: Sequence[str | Path], spec: FeatureSpec) -> dict[str, FeatureStats]:
    """Statistics of every feature: context features over lists, example features over real
    (unpadded) documents; absent features count as their default."""
    return _scan([str(f) for f in files], spec)[0]


def open_elwc(train: str, vali: str | None, test: str | None, spec: FeatureSpec | str | Path,
              with_stats: bool = True) -> PreparedData:
    """Adopts existing ELWC shards given by glob patterns; writes nothing.

    Counts stay None. With ``with_stats`` (the default) the training files are read once,
    eagerly, to compute ``stats`` and to check that they parse with ``spec`` and carry real
    labels (>= 0); a mismatch is a DataError now rather than mid-training. ``root`` is the
    train files' directory: do not ``save()`` the result, it would write there.
    """
    if not isinstance(spec, FeatureSpec):
        try:
            spec = FeatureSpec.load(spec)
        except SpecError as e:
            raise DataError(str(e)) from None
    splits: dict[str, SplitInfo] = {}
    for name, pattern in (("train", train), ("vali", vali), ("test", test)):
        if pattern is None:
            continue
        files = sorted(f for f in glob.glob(os.path.expanduser(str(pattern)), recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"{pattern}: no files match ({name} split)")
        splits[name] = SplitInfo(files=[os.path.abspath(f) for f in files])
    root = Path(os.path.commonpath([os.path.dirname(f) for f in splits["train"].files]))
    stats = None
    if with_stats:
        stats, _, docs, labeled = _scan(splits["train"].files, spec)
        if labeled == 0:
            raise DataError(f"{train}: no document has a label >= 0 in '{spec.label.name}' "
                            f"({docs} documents; a missing label parses as {spec.label.default}, "
                            "which TF Ranking treats as padding)")
    source = {"kind": "elwc", "patterns": {"train": train, "vali": vali, "test": test}}
    return PreparedData(root=root, spec=spec, splits=splits, stats=stats, source=source)


# --------------------------------------------------------------------------------------
# Content-addressed cache
# --------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(prefix: str, payload: Mapping) -> str:
    """``{prefix}-{16 hex digits}`` of the sha256 of ``payload`` as canonical JSON."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(cache_root: Path) -> None:
    """Removes ``*.tmp-HOST-PID-RAND`` dirs left by dead processes on this host."""
    host = socket.gethostname()
    for p in cache_root.glob("*.tmp-*"):
        try:
            tail = p.name.rsplit(".tmp-", 1)[1]
            owner, pid, _ = tail.rsplit("-", 2)
            dead = owner == host and not _pid_alive(int(pid))
        except (IndexError, ValueError):
            continue
        if dead and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def build_cached(cache_root: str | Path, key: str, build: Callable[[Path], PreparedData]) -> PreparedData:
    """Returns ``cache_root/key`` if complete, else builds it so it only ever appears complete.

    ``build(tmp_dir)`` writes the shards into an empty temporary sibling
    (``{key}.tmp-{host}-{pid}-{random}``) and returns a PreparedData rooted there. Its
    ``metadata.json`` is written last, then the directory is renamed into place. Any
    exception (DataError, KeyboardInterrupt) removes the temporary dir; one left by a killed
    process is removed by the next call on the same host. ``metadata.json`` present means
    complete.
    """
    cache_root = Path(cache_root).resolve()  # stored paths must survive a chdir
    final = cache_root / key
    if (final / METADATA_FILE).is_file():
        log.info("reusing prepared data %s", final)
        return PreparedData.load(final)
    cache_root.mkdir(parents=True, exist_ok=True)
    _clean_stale(cache_root)
    tmp = cache_root / f"{key}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        prepared = build(tmp)
        prepared.root = tmp
        prepared.save()  # feature_spec.json, then metadata.json
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / METADATA_FILE).is_file():  # junk not made by this protocol
                shutil.rmtree(final)
                os.rename(tmp, final)
            # else: a concurrent run finished first; its copy is equivalent
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared data written to %s", final)
    return PreparedData.load(final)


# --------------------------------------------------------------------------------------
# LETOR conversion
# --------------------------------------------------------------------------------------
def find_letor_files(fold_dir: str | Path) -> dict[str, Path]:
    """``{split: path}`` for ``train``/``vali``/``test`` ``.txt`` or ``.txt.gz`` in a fold."""
    fold_dir = Path(fold_dir)
    if not fold_dir.is_dir():
        raise DataError(f"{fold_dir}: no such directory")
    found: dict[str, Path] = {}
    for split in SPLITS:
        candidates = [fold_dir / f"{split}.txt", fold_dir / f"{split}.txt.gz"]
        present = [p for p in candidates if p.is_file()]
        if len(present) > 1:
            raise DataError(f"{fold_dir}: both {split}.txt and {split}.txt.gz exist; keep one")
        if present:
            found[split] = present[0]
    if "train" not in found:
        raise DataError(f"{fold_dir}: no train.txt or train.txt.gz")
    return found


def letor_spec(feature_indices: Iterable[int]) -> FeatureSpec:
    """Example features ``f{i}`` (numeric order), no context features, default label."""
    return FeatureSpec(context=(), example=tuple(Feature(f"f{i}") for i in sorted(feature_indices)))


def convert_letor(fold_dir: str | Path, cache_root: str | Path, num_shards: int = 4,
                  progress: bool = True) -> PreparedData:
    """Converts a LETOR fold to ELWC shards under ``cache_root/letor-<hash>``, or reuses them.

    The key hashes the input files' bytes, the split names, ``num_shards`` and
    ``CONVERTER_VERSION``. The feature spec comes from the training file alone; vali/test
    may only use its features.
    """
    from tqdm import tqdm

    if num_shards < 1:
        raise ConfigError(f"num_shards: must be >= 1, got {num_shards}")
    fold_dir = Path(fold_dir)
    files = find_letor_files(fold_dir)
    hashes = {split: file_sha256(p) for split, p in files.items()}
    key = cache_key("letor", {"converter": CONVERTER_VERSION, "num_shards": num_shards, "files": hashes})

    def build(tmp: Path) -> PreparedData:
        sizes = {split: p.stat().st_size for split, p in files.items()}
        with tqdm(total=sizes["train"] + sum(sizes.values()), unit="B", unit_scale=True, file=sys.stderr,
                  disable=None if progress else True, desc=f"converting {fold_dir.name}") as bar:
            seen: set[int] = set()
            for q in read_letor(files["train"], on_bytes=bar.update):
                seen.update(np.unique(q.indices).tolist())
            if not seen:
                raise DataError(f"{files['train']}: no features in any line")
            indices = sorted(seen)
            spec = letor_spec(indices)
            splits: dict[str, SplitInfo] = {}
            stats = None
            for split, path in files.items():
                allowed = None if split == "train" else seen
                with ElwcWriter(spec, tmp, split, num_shards, with_stats=split == "train") as w:
                    for q in read_letor(path, allowed_features=allowed, on_bytes=bar.update):
                        values, present = q.dense(indices)
                        w.write({f"f{i}": values[:, j] for j, i in enumerate(indices)}, q.labels,
                                present=None if present.all() else
                                {f"f{i}": present[:, j] for j, i in enumerate(indices)})
                    splits[split] = w.close()
                    if split == "train":
                        stats = w.stats
        source = {
            "kind": "letor",
            "converter_version": CONVERTER_VERSION,
            "fold_dir": str(fold_dir.resolve()),
            "num_shards": num_shards,
            "key": key,
            "files": {s: {"path": str(p.resolve()), "sha256": hashes[s]} for s, p in files.items()},
        }
        return PreparedData(root=tmp, spec=spec, splits=splits, stats=stats, source=source)

    return build_cached(cache_root, key, build)


__all__ = [
    "CONVERTER_VERSION", "ElwcWriter", "StatsAccumulator", "build_cached", "cache_key", "compute_stats",
    "convert_letor", "file_sha256", "find_letor_files", "letor_spec", "open_elwc", "read_elwc", "shard_name",
]
