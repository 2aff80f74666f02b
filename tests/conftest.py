"""Shared fixtures: the MQ2008 folds from ../shared (skipped with a reason where absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MQ2008 = Path(os.environ.get("RANKING_EXP_MQ2008", REPO.parent / "shared" / "data" / "MQ2008"))


@pytest.fixture(scope="session")
def mq2008_fold1() -> Path:
    fold = MQ2008 / "Fold1"
    if not (fold / "train.txt.gz").exists():
        pytest.skip(f"MQ2008 not found at {MQ2008} (set RANKING_EXP_MQ2008 to its folder)")
    return fold


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """One converted-data cache for the whole session (entries are keyed by content)."""
    path = tmp_path_factory.mktemp("ranking_exp_cache")
    os.environ["RANKING_EXP_CACHE_DIR"] = str(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return path


@pytest.fixture
def fresh_keras():
    """A new Keras graph and layer-name counter per test (``pytestmark = usefixtures(...)``)."""
    import tensorflow as tf

    tf.keras.backend.clear_session()
    yield
