"""Bad LETOR input through the real command: one line naming file and line, exit 2, nothing left."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli

GOOD = "2 qid:1 1:0.5 2:0.1\n0 qid:1 1:0.2 2:0.3\n1 qid:2 1:0.9 2:0.4\n0 qid:2 1:0.1 2:0.0\n"

CASES = {
    # name: (train text, test text, expected message after "error: ", with {train}/{test} paths)
    "empty file": ("", GOOD, "{train}: empty file"),
    "no qid": ("2 qid:1 1:0.5\n0 1:0.2\n", GOOD, "{train}:2:"),
    "non-numeric value": ("2 qid:1 1:0.5\n0 qid:1 1:abc\n", GOOD, "{train}:2:"),
    "non-numeric label": ("x qid:1 1:0.5\n", GOOD, "{train}:1:"),
    "feature index 0": ("2 qid:1 0:0.5\n", GOOD, "{train}:1:"),
    "negative feature index": ("2 qid:1 1:0.5\n1 qid:1 -3:0.5\n", GOOD, "{train}:2:"),
    "nan": ("2 qid:1 1:0.5\n1 qid:1 1:nan\n", GOOD, "{train}:2:"),
    "inf": ("2 qid:1 1:inf\n", GOOD, "{train}:1:"),
    "negative label": ("2 qid:1 1:0.5\n-1 qid:1 1:0.5\n", GOOD, "{train}:2:"),
    "query not contiguous": ("2 qid:1 1:0.5\n1 qid:2 1:0.5\n0 qid:1 1:0.1\n", GOOD, "{train}:3:"),
    "unknown feature in test": (GOOD, "1 qid:9 1:0.5 2:0.1\n0 qid:9 1:0.2 7:0.3\n", "{test}:2: feature 7"),
}


def write_fold(root: Path, train: str, test: str) -> Path:
    fold = root / "fold"
    fold.mkdir()
    (fold / "train.txt").write_text(train)
    (fold / "vali.txt").write_text(GOOD)
    (fold / "test.txt").write_text(test)
    return fold


def assert_one_line_error(r, expected: str):
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {expected}"), lines[0]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_letor_input(tmp_path: Path, data_cache: Path, case: str):
    train, test, expected = CASES[case]
    fold = write_fold(tmp_path, train, test)
    r = run_cli(["dataset=letor", f"dataset.path={fold}", "train.epochs=1"], cwd=tmp_path)
    assert_one_line_error(r, expected.format(train=fold / "train.txt", test=fold / "test.txt"))
    # nothing half-written: no cache entry that looks complete for this fold, no MLflow run
    assert not any(p.name.startswith("letor-") and (p / "metadata.json").exists()
                   and str(fold) in (p / "metadata.json").read_text() for p in data_cache.iterdir())
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_dataset_path(tmp_path: Path):
    r = run_cli(["dataset=letor", f"dataset.path={tmp_path / 'nowhere'}"], cwd=tmp_path)
    assert_one_line_error(r, f"{tmp_path / 'nowhere'}: no such directory")
