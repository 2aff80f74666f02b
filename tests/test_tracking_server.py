"""tracking.uri pointing at a real `mlflow server` (HTTP, server-side artifacts)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from ranking_exp.experiment import run_training
from tests.helpers import compose_run, tiny

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield url, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_run_records_to_an_mlflow_server(server, tmp_path: Path):
    url, root = server
    tf.keras.backend.clear_session()
    run, cfg = compose_run(tmp_path, tiny([f"tracking.uri={url}", "tracking.experiment=remote"]))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="remote")
    client = MlflowClient(url)
    got = client.get_run(result.run_id)
    assert got.info.status == "FINISHED" and "test_ndcg_10" in got.data.metrics
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded locally
    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert model.metadata.flavors["python_function"]["artifacts"]["saved_model"]
    assert any((root / "artifacts").rglob("saved_model.pb"))  # artifacts went to the server's store
