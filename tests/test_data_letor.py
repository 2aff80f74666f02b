"""The LETOR text reader: parsing, streaming, and a one-line FILE:LINE error per bad input."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ranking_exp.data.letor import read_letor
from ranking_exp.errors import DataError

SAMPLE = """\
# a comment line before any data
2 qid:10 1:0.5 3:1.25 # docid = a
0 qid:10 2:-1 3:0

1 qid:10 1:1e-3 10:7
0 qid:7 4:2.5
3 qid:abc
1 qid:abc 1:1 2:2 3:3 4:4 10:10
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["train.txt", "train.txt.gz"])
def test_reads_queries_in_file_order(tmp_path, name):
    queries = list(read_letor(write(tmp_path, name, SAMPLE)))
    assert [q.qid for q in queries] == ["10", "7", "abc"]
    assert [q.first_line for q in queries] == [2, 6, 7]
    assert queries[0].labels.dtype == np.float32
    np.testing.assert_array_equal(queries[0].labels, [2, 0, 1])
    assert queries[0].features == [{1: 0.5, 3: 1.25}, {2: -1.0, 3: 0.0}, {1: np.float32(1e-3), 10: 7.0}]
    assert queries[1].features == [{4: 2.5}]
    assert queries[2].features == [{}, {1: 1, 2: 2, 3: 3, 4: 4, 10: 10}]
    np.testing.assert_array_equal(queries[0].lines, [2, 3, 5])


def test_gzip_detected_by_magic_bytes(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(gzip.compress(SAMPLE.encode()))
    assert [q.qid for q in read_letor(path)] == ["10", "7", "abc"]


def test_dense_fills_missing_features_with_zero(tmp_path):
    q = next(read_letor(write(tmp_path, "t.txt", SAMPLE)))
    values, present = q.dense([1, 2, 3, 10])
    np.testing.assert_array_equal(values, np.float32([[0.5, 0, 1.25, 0], [0, -1, 0, 0], [1e-3, 0, 0, 7]]))
    np.testing.assert_array_equal(present, [[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1]])
    values, _ = q.dense([3])  # features not asked for are dropped
    np.testing.assert_array_equal(values[:, 0], [1.25, 0, 0])


def test_streams_and_reports_progress(tmp_path):
    good = "".join(f"{i % 3} qid:{i // 4} 1:{i}\n" for i in range(400))
    path = write(tmp_path, "t.txt", good + "x qid:999 1:1\n")
    it = read_letor(path)
    first = next(it)  # yielded before the bad last line is reached
    assert first.qid == "0" and first.num_docs == 4
    with pytest.raises(DataError, match=":401: label 'x' is not a number"):
        list(it)
    seen = []
    list(read_letor(write(tmp_path, "ok.txt.gz", good), on_bytes=seen.append))
    assert sum(seen) == (tmp_path / "ok.txt.gz").stat().st_size


def test_allowed_features_accepts_known(tmp_path):
    path = write(tmp_path, "vali.txt", "1 qid:1 1:1 10:2\n")
    assert len(list(read_letor(path, allowed_features={1, 2, 10}))) == 1


GOOD = "0 qid:1 1:0.1 2:0.2\n1 qid:1 1:0.3\n"
BAD_CASES = [
    # (file content, line of the error, message after "FILE:LINE: ")
    (GOOD + "1 1:0.5\n", 3, "expected 'LABEL qid:QID INDEX:VALUE ...', found no qid: field"),
    (GOOD + "1 qid: 1:0.5\n", 3, "expected 'LABEL qid:QID INDEX:VALUE ...', found no qid: field"),
    ("high qid:1 1:0.5\n", 1, "label 'high' is not a number"),
    (GOOD + "1 qid:1 1:abc\n", 3, "feature 1 value 'abc' is not a number"),
    (GOOD + "1 qid:1 1:1_0\n", 3, "feature 1 value '1_0' is not a number"),
    (GOOD + "1 qid:1 0:0.5\n0 qid:1 1:1\n", 3, "feature index 0 must be a positive integer (indices start at 1)"),
    (GOOD + "1 qid:1 -2:0.5\n", 3, "feature index -2 must be a positive integer (indices start at 1)"),
    (GOOD + "1 qid:1 1.5:0.5\n", 3, "feature index '1.5' is not an integer"),
    (GOOD + "1 qid:1 a:0.5\n", 3, "feature index 'a' is not an integer"),
    (GOOD + "1 qid:1 +4:0.5\n", 3, "feature index '+4' must be written with digits only"),
    (GOOD + "1 qid:1 7\n", 3, "'7' is not INDEX:VALUE"),
    (GOOD + "1 qid:1 7:1:2\n", 3, "'7:1:2' is not INDEX:VALUE"),
    (GOOD + "nan qid:1 1:0.5\n", 3, "label 'nan' is not finite"),
    (GOOD + "inf qid:2 1:0.5\n", 3, "label 'inf' is not finite"),
    (GOOD + "1 qid:1 1:0.5 2:nan\n0 qid:1 1:1\n", 3, "feature 2 value nan is not finite"),
    (GOOD + "1 qid:2 3:-inf\n", 3, "feature 3 value -inf is not finite"),
    (GOOD + "1 qid:2 3:1e39\n", 3, "feature 3 value 1e+39 overflows float32"),
    (GOOD + "-1 qid:1 1:0.5\n", 3, "label -1.0 is negative (TF Ranking treats labels < 0 as padding)"),
    (GOOD + "1 qid:1 1:0.5 2:1 1:0.7\n", 3, "feature 1 given twice"),
    (GOOD + "0 qid:2 1:1\n0 qid:3 1:1\n1 qid:1 1:0.5\n", 5,
     "lines of qid 1 are not contiguous (it first appeared at line 1, other qids came between)"),
]


@pytest.mark.parametrize("gz", [False, True], ids=["txt", "gz"])
@pytest.mark.parametrize(("text", "line", "problem"), BAD_CASES, ids=[c[2][:40] for c in BAD_CASES])
def test_bad_input_names_file_and_line(tmp_path, text, line, problem, gz):
    path = write(tmp_path, "test.txt.gz" if gz else "test.txt", text)
    with pytest.raises(DataError) as e:
        list(read_letor(path))
    assert str(e.value) == f"{path}:{line}: {problem}"


def test_unknown_feature_in_vali(tmp_path):
    path = write(tmp_path, "vali.txt", GOOD + "0 qid:2 1:1\n1 qid:2 1:0.5 47:1\n0 qid:2 2:1\n")
    with pytest.raises(DataError) as e:
        list(read_letor(path, allowed_features={1, 2}))
    assert str(e.value) == f"{path}:4: feature 47 is not in the training data"


def test_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as e:
        list(read_letor(missing))
    assert str(e.value) == f"{missing}: no such file"
    for name, text in [("empty.txt", ""), ("comments.txt.gz", "# only\n\n   \n# comments\n")]:
        path = write(tmp_path, name, text)
        with pytest.raises(DataError) as e:
            list(read_letor(path))
        assert str(e.value) == f"{path}: empty file (no ranking lines)"


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "train.txt.gz"
    data = gzip.compress(("0 qid:1 1:0.5\n" * 2000).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        list(read_letor(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}:") and "gzip" in msg and "\n" not in msg
