"""LETOR -> ELWC conversion, the cache, open_elwc and the wire encoding, on real files."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import input_pb2

from ranking_exp.data.elwc import (
    ElwcWriter,
    compute_stats,
    convert_letor,
    open_elwc,
    read_elwc,
)
from ranking_exp.data.letor import read_letor
from ranking_exp.data.prepared import METADATA_FILE, PreparedData
from ranking_exp.data.spec import Feature, FeatureSpec
from ranking_exp.errors import DataError

REPO = Path(__file__).resolve().parents[1]

# Sparse lines, a comment, varied list sizes; feature 5 never occurs, 10 sorts after 2.
TRAIN = """\
# train split
2 qid:1 1:0.5 2:1.5 10:3 # docid = d1
0 qid:1 1:0.25
1 qid:1 2:-2 3:4 10:0.125
0 qid:2 1:1 2:2 3:3 4:4 10:10
1 qid:3 4:100
0 qid:3 1:0.75 4:-100
4 qid:3 3:0.5
0 qid:4 2:9
1 qid:5 1:1e-3 2:7 3:8 4:9 10:1e3
"""
VALI = "1 qid:20 1:1 10:2\n0 qid:20 3:3\n2 qid:21 4:1 # c\n"
TEST = "0 qid:30 2:5\n1 qid:30 1:1 2:2\n0 qid:31 3:1\n1 qid:32 10:7\n"


def make_fold(root: Path, train=TRAIN, vali=VALI, test=TEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "train.txt.gz", "wt") as f:
        f.write(train)
    if vali is not None:
        (root / "vali.txt").write_text(vali)
    if test is not None:
        (root / "test.txt").write_text(test)
    return root


def expected_lists(path: Path, indices: list[int]):
    return [(q.labels, q.dense(indices)[0]) for q in read_letor(path)]


def complete_dirs(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if (p / METADATA_FILE).exists()] if cache.exists() else []


@pytest.fixture()
def fold(tmp_path) -> Path:
    return make_fold(tmp_path / "fold")


def test_round_trip_equals_input(fold, tmp_path):
    data = convert_letor(fold, tmp_path / "cache", num_shards=2, progress=False)
    spec = data.spec
    assert spec.example_names == ["f1", "f2", "f3", "f4", "f10"]
    assert spec.context == ()
    assert (spec.label.name, spec.label.dtype, spec.label.default) == ("relevance", "float32", -1.0)
    assert all(f.dtype == "float32" and f.default == 0.0 and f.shape == (1,) for f in spec.example)
    indices = [1, 2, 3, 4, 10]
    for split, path in [("train", fold / "train.txt.gz"), ("vali", fold / "vali.txt"), ("test", fold / "test.txt")]:
        info = data.splits[split]
        assert [Path(f).name for f in info.files] == [f"{split}-00000-of-00002.tfrecord",
                                                      f"{split}-00001-of-00002.tfrecord"]
        expected = expected_lists(path, indices)
        assert info.num_lists == len(expected)
        assert info.num_docs == sum(len(labels) for labels, _ in expected)
        for shard, file in enumerate(info.files):  # round-robin: list i goes to shard i % 2
            got = list(read_elwc([file], spec))
            want = expected[shard::2]
            assert len(got) == len(want)
            for (context, examples, labels), (want_labels, want_values) in zip(got, want):
                assert context == {}
                assert labels.dtype == np.float32
                np.testing.assert_array_equal(labels, want_labels)
                for j, name in enumerate(spec.example_names):
                    assert examples[name].shape == (len(want_labels), 1)
                    np.testing.assert_array_equal(examples[name][:, 0], want_values[:, j])


def test_stats_match_numpy(fold, tmp_path):
    data = convert_letor(fold, tmp_path / "cache", num_shards=3, progress=False)
    dense = np.concatenate([v for _, v in expected_lists(fold / "train.txt.gz", [1, 2, 3, 4, 10])]).astype(np.float64)
    assert set(data.stats) == set(data.spec.example_names)
    for j, name in enumerate(data.spec.example_names):
        s = data.stats[name]
        assert s.count == 9
        assert s.mean == pytest.approx(dense[:, j].mean(), rel=1e-12)
        assert s.std == pytest.approx(dense[:, j].std(), rel=1e-12)
        assert (s.min, s.max) == (dense[:, j].min(), dense[:, j].max())
    # The same numbers from the TF Ranking parse of the shards (used by open_elwc).
    again = compute_stats(data.splits["train"].files, data.spec)
    for name, s in data.stats.items():
        assert again[name].count == s.count
        assert again[name].mean == pytest.approx(s.mean, rel=1e-9)
        assert again[name].std == pytest.approx(s.std, rel=1e-9)


def test_source_and_metadata(fold, tmp_path):
    data = convert_letor(fold, tmp_path / "cache", num_shards=1, progress=False)
    assert data.root.parent == tmp_path / "cache" and data.root.name.startswith("letor-")
    assert data.source["kind"] == "letor" and data.source["converter_version"]
    assert set(data.source["files"]) == {"train", "vali", "test"}
    assert data.source["files"]["train"]["path"] == str((fold / "train.txt.gz").resolve())
    assert len(data.source["files"]["train"]["sha256"]) == 64
    loaded = PreparedData.load(data.root)
    assert loaded.spec == data.spec and loaded.splits == data.splits and loaded.stats == data.stats
    # Files are stored relative to the root, so a cache dir can be moved.
    meta = json.loads((data.root / METADATA_FILE).read_text())
    assert meta["splits"]["train"]["files"] == ["train-00000-of-00001.tfrecord"]


def test_second_run_reuses_cache(fold, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = convert_letor(fold, cache, num_shards=2, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.root.iterdir()}
    time.sleep(0.01)
    with caplog.at_level("INFO", logger="ranking_exp.data.elwc"):
        second = convert_letor(fold, cache, num_shards=2, progress=False)
    assert second.root == first.root
    assert {p.name: p.stat().st_mtime_ns for p in second.root.iterdir()} == mtimes
    assert any("reusing" in r.getMessage() for r in caplog.records)
    # The key follows content and shard count, not names or timestamps.
    assert convert_letor(fold, cache, num_shards=3, progress=False).root != first.root
    (fold / "test.txt").write_text(TEST.replace("0 qid:31", "1 qid:31"))
    changed = convert_letor(fold, cache, num_shards=2, progress=False)
    assert changed.root != first.root
    assert len(complete_dirs(cache)) == 3


def test_error_in_test_split_leaves_nothing_complete(fold, tmp_path):
    cache = tmp_path / "cache"
    test = fold / "test.txt"
    test.write_text(TEST + "1 qid:33 1:1 99:1\n")  # train and vali were written before this
    with pytest.raises(DataError) as e:
        convert_letor(fold, cache, progress=False)
    assert str(e.value) == f"{test}:5: feature 99 is not in the training data"
    assert complete_dirs(cache) == []
    assert list(cache.iterdir()) == []  # the temporary dir is gone too
    test.write_text(TEST)
    data = convert_letor(fold, cache, progress=False)
    assert data.splits["test"].num_lists == 3


def test_stale_temp_dir_of_dead_process_is_ignored_and_removed(fold, tmp_path):
    cache = tmp_path / "cache"
    data = convert_letor(fold, cache, progress=False)
    key = data.root.name
    shutil.rmtree(data.root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache / f"{key}.tmp-{socket.gethostname()}-{int(dead.stdout)}-abcd1234"
    stale.mkdir()
    (stale / "train-00000-of-00004.tfrecord").write_bytes(b"half")
    again = convert_letor(fold, cache, progress=False)
    assert again.root == cache / key
    assert not stale.exists()
    assert sorted(p.name for p in cache.iterdir()) == [key]


KILL_SCRIPT = """
import sys
from ranking_exp.data.elwc import convert_letor
convert_letor(sys.argv[1], sys.argv[2], num_shards=2, progress=False)
"""


def test_sigkill_mid_conversion_then_rerun(tmp_path):
    lines = "".join(f"{i % 3} qid:{i // 20} " + " ".join(f"{k}:{(i * k) % 97 / 7}" for k in range(1, 11)) + "\n"
                    for i in range(20000))
    fold = make_fold(tmp_path / "big", train=lines, vali=None, test=None)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(fold), str(cache)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not list(cache.glob("*.tmp-*")):
            time.sleep(0.01)
        assert proc.poll() is None, "conversion finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # mid-conversion: its temporary dir exists
    finally:
        proc.wait()
    assert complete_dirs(cache) == []
    assert len(list(cache.glob("*.tmp-*"))) == 1  # left behind, but not complete-looking
    data = convert_letor(fold, cache, num_shards=2, progress=False)
    assert data.splits["train"].num_lists == 1000
    assert list(cache.glob("*.tmp-*")) == []  # the dead process's dir was cleaned


def test_fold_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        convert_letor(missing, tmp_path / "cache", progress=False)
    assert str(e.value) == f"{missing}: no such directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "vali.txt").write_text(VALI)
    with pytest.raises(DataError) as e:
        convert_letor(empty, tmp_path / "cache", progress=False)
    assert str(e.value) == f"{empty}: no train.txt or train.txt.gz"
    both = make_fold(tmp_path / "both")
    (both / "train.txt").write_text(TRAIN)
    with pytest.raises(DataError, match="both train.txt and train.txt.gz"):
        convert_letor(both, tmp_path / "cache", progress=False)


def test_train_only_fold(tmp_path):
    fold = make_fold(tmp_path / "fold", vali=None, test=None)
    data = convert_letor(fold, tmp_path / "cache", progress=False)
    assert set(data.splits) == {"train"}


def test_open_elwc_reads_in_place_without_writing(fold, tmp_path):
    converted = convert_letor(fold, tmp_path / "cache", num_shards=2, progress=False)
    root = converted.root
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    data = open_elwc(str(root / "train-*.tfrecord"), str(root / "vali-*"), None, root / "feature_spec.json")
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    assert data.root == root
    assert data.splits["train"].files == converted.splits["train"].files
    assert data.splits["train"].num_lists is None and data.splits["vali"].num_docs is None
    assert "test" not in data.splits
    assert data.spec == converted.spec
    for name, s in converted.stats.items():
        assert data.stats[name].mean == pytest.approx(s.mean, rel=1e-9)
        assert (data.stats[name].min, data.stats[name].max) == (s.min, s.max)
    lazy = open_elwc(str(root / "train-*"), None, None, converted.spec, with_stats=False)
    assert lazy.stats is None


def test_open_elwc_errors(fold, tmp_path):
    root = convert_letor(fold, tmp_path / "cache", num_shards=1, progress=False).root
    spec = FeatureSpec.load(root)
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(DataError) as e:
        open_elwc(str(root / "train-*"), pattern, None, spec)
    assert str(e.value) == f"{pattern}: no files match (vali split)"
    with pytest.raises(DataError, match="no feature spec found"):
        open_elwc(str(root / "train-*"), None, None, tmp_path / "no_spec.json")
    shard = str(root / "train-00000-of-00001.tfrecord")
    int_label = FeatureSpec(spec.context, spec.example, label=Feature("relevance", "int64", (1,), -1))
    with pytest.raises(DataError) as e:
        open_elwc(shard, None, None, int_label)
    msg = str(e.value)
    assert msg.startswith(f"{shard}: record 0") and "relevance" in msg and "\n" not in msg
    renamed = FeatureSpec(spec.context, spec.example, label=Feature("grade", "float32", (1,), -1))
    with pytest.raises(DataError, match="no document has a label >= 0 in 'grade'"):
        open_elwc(shard, None, None, renamed)
    required = FeatureSpec(spec.context, spec.example + (Feature("missing", default=None),))
    with pytest.raises(DataError, match=r"^\S+train-00000-of-00001.tfrecord: record 0 .*missing"):
        open_elwc(shard, None, None, required)
    garbage = tmp_path / "garbage.tfrecord"
    garbage.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(DataError, match=f"^{garbage}: record 0"):
        open_elwc(str(garbage), None, None, spec)


def test_writer_general_spec_matches_protobuf(tmp_path):
    """Context features, int64 and multi-valued features, absent values: bytes parse to
    the message protobuf would build, and TF Ranking parses them back."""
    spec = FeatureSpec(
        context=(Feature("lang", "int64", (1,), 0), Feature("qvec", "float32", (2,), 0.0)),
        example=(Feature("score", "float32", (1,), 0.5), Feature("pos", "int64", (1,), 0),
                 Feature("emb", "float32", (3,), 0.0)),
    )
    lists = [
        ({"lang": [-3], "qvec": [1.5, -2.0]},
         {"score": [0.25, 9.0], "pos": [1, 2], "emb": [[1, 2, 3], [4, 5, 6]]}, [1.0, 0.0], {"score": [True, False]}),
        ({"qvec": [0.0, 1.0]}, {"score": [7.0], "pos": [2 ** 62 + 1], "emb": [[0, 0, 1]]}, [3.0], None),
    ]
    with ElwcWriter(spec, tmp_path, "train", num_shards=1, with_stats=True) as w:
        for context, examples, labels, present in lists:
            w.write({k: np.asarray(v) for k, v in examples.items()}, np.asarray(labels, np.float32),
                    context={k: np.asarray(v) for k, v in context.items()}, present=present)
        info = w.close()
    assert (info.num_lists, info.num_docs) == (2, 3)
    records = [r.numpy() for r in tf.data.TFRecordDataset(info.files)]
    want = input_pb2.ExampleListWithContext()
    want.context.features.feature["lang"].int64_list.value.append(-3)
    want.context.features.feature["qvec"].float_list.value.extend([1.5, -2.0])
    for score, pos, emb, label in [(0.25, 1, [1, 2, 3], 1.0), (None, 2, [4, 5, 6], 0.0)]:
        f = want.examples.add().features.feature
        if score is not None:
            f["score"].float_list.value.append(score)
        f["pos"].int64_list.value.append(pos)
        f["emb"].float_list.value.extend(emb)
        f["relevance"].float_list.value.append(label)
    assert input_pb2.ExampleListWithContext.FromString(records[0]) == want
    got = list(read_elwc(info.files, spec))
    context, examples, labels = got[0]
    assert context["lang"].tolist() == [-3] and context["qvec"].tolist() == [1.5, -2.0]
    assert examples["score"][:, 0].tolist() == [0.25, 0.5]  # absent -> the spec's default
    assert examples["emb"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert labels.tolist() == [1.0, 0.0]
    context, examples, labels = got[1]
    assert context["lang"].tolist() == [0] and examples["pos"].tolist() == [[2 ** 62 + 1]]
    # Stats: absent documents count with their default; vectors pool their values.
    assert w.stats["score"].mean == pytest.approx((0.25 + 0.5 + 7.0) / 3)
    assert w.stats["emb"].count == 9 and w.stats["emb"].max == 6.0
    assert w.stats["lang"].count == 2 and w.stats["lang"].min == -3.0
    assert w.stats["qvec"].mean == pytest.approx(0.125)


def test_required_example_feature_with_ragged_lists(tmp_path):
    """TF Ranking pads lists with empty examples; a required feature must still read back."""
    spec = FeatureSpec(context=(), example=(Feature("pos", "int64", (1,), None),))
    with ElwcWriter(spec, tmp_path, "train") as w:
        w.write({"pos": np.array([1, 2])}, np.array([1.0, 0.0]))
        w.write({"pos": np.array([3])}, np.array([1.0]))
        info = w.close()
    got = [(e["pos"][:, 0].tolist(), labels.tolist()) for _, e, labels in read_elwc(info.files, spec)]
    assert got == [([1, 2], [1.0, 0.0]), ([3], [1.0])]
    assert compute_stats(info.files, spec)["pos"].mean == 2.0


def test_stats_are_stable_for_large_offsets(tmp_path):
    spec = FeatureSpec(context=(), example=(Feature("t"),))
    rng = np.random.default_rng(0)
    values = (1e6 + rng.normal(0, 1e-2, 5000)).astype(np.float32)
    with ElwcWriter(spec, tmp_path, "train", 2, with_stats=True) as w:
        for chunk in np.array_split(values, 97):
            w.write({"t": chunk}, np.zeros(len(chunk), np.float32))
        w.close()
    v = values.astype(np.float64)
    assert w.stats["t"].std == pytest.approx(v.std(), rel=1e-6)
    assert w.stats["t"].mean == pytest.approx(v.mean(), rel=1e-12)


def test_mq2008_fold1(mq2008_fold1, tmp_path):
    start = time.perf_counter()
    data = convert_letor(mq2008_fold1, tmp_path / "cache", num_shards=4, progress=False)
    elapsed = time.perf_counter() - start
    assert data.spec.example_names == [f"f{i}" for i in range(1, 47)]
    qids, lines = {}, {}
    for split in ("train", "vali", "test"):
        with gzip.open(mq2008_fold1 / f"{split}.txt.gz", "rt") as f:
            rows = [line.split()[1] for line in f if line.strip()]
        lines[split], qids[split] = len(rows), len(set(rows))
    for split, info in data.splits.items():
        assert info.num_docs == lines[split]
        assert info.num_lists == qids[split]
    docs = 0
    for split in ("train", "test"):
        for _, examples, labels in read_elwc(data.splits[split].files, data.spec, batch_size=128):
            assert set(np.unique(labels).tolist()) <= {0.0, 1.0, 2.0}
            assert examples["f46"].shape == (len(labels), 1)
            docs += len(labels)
    assert docs == lines["train"] + lines["test"]
    assert data.stats["f1"].count == lines["train"]
    assert 0.0 <= data.stats["f1"].min <= data.stats["f1"].max <= 1.0
    print(f"MQ2008 Fold1 conversion: {elapsed:.2f}s")
