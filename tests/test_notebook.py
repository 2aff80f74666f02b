"""notebooks/quickstart.ipynb runs top to bottom: trains, finds the MLflow run, ranks a query."""
from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_quickstart_notebook_executes_and_ranks_a_query(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_OVERRIDES", "train.epochs=2 dataset.num_train=200")
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "mlflow.db").exists()
    metrics = nb.cells[3].outputs[-1]["data"]["text/plain"]
    assert "test_ndcg_10" in metrics
    table = nb.cells[5].outputs[-1]["data"]["text/html"]
    assert "<th>rank</th>" in table and "<th>score</th>" in table
