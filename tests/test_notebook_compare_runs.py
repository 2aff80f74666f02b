"""notebooks/compare_runs.ipynb on a real 3-trial sweep: the trials table, the per-trial plot, the learning curves."""
from __future__ import annotations

import os
import re

import nbformat
import optuna
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO, run_cli
from tests.test_sweeper import SMALL_SPACE, sweep_args  # sweep_args: write_sweep's "tiny" sweep file + TINY_SWEEP

pytestmark = pytest.mark.slow


def cell(nb, tag: str):
    [found] = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return found


def outputs_with(c, mime: str) -> list:
    return [o for o in c.get("outputs", []) if mime in o.get("data", {})]


def strip_tags(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html).strip()


def html_table(html: str) -> tuple[list[str], list[list[str]]]:
    """Column names and body rows (cell texts, index left out) of a pandas ``to_html`` table."""
    head = re.search(r"<thead>(.*?)</thead>", html, re.DOTALL).group(1)
    columns = [strip_tags(th) for th in re.findall(r"<th[^>]*>(.*?)</th>", head, re.DOTALL)][1:]
    body = re.search(r"<tbody>(.*?)</tbody>", html, re.DOTALL).group(1)
    rows = [[strip_tags(td) for td in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.DOTALL)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL)]
    return columns, rows


def test_compare_runs_notebook_tables_and_plots_a_real_sweep(tmp_path):
    r = run_cli(sweep_args(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner.kind=none",
                           "hydra.sweeper.register_model=false"),  # TINY_SWEEP logs no model
                cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")

    # The notebook's defaults otherwise: the most recent sweep of experiment ranking_exp.
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEP_STUDY", "MLFLOW_EXPERIMENT")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    nb = nbformat.read(REPO / "notebooks" / "compare_runs.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute(cwd=str(tmp_path), env=env)

    loaded = "".join(o.get("text", "") for o in cell(nb, "load-runs").outputs)
    assert "study 'tiny'" in loaded and "3 trial runs" in loaded, loaded

    [table] = outputs_with(cell(nb, "trials-table"), "text/html")
    columns, rows = html_table(table["data"]["text/html"])
    assert len(rows) == 3, table["data"]["text/plain"]
    for name in ("trial", "state", "best_val_ndcg_10", "test_ndcg_10", *SMALL_SPACE):
        assert name in columns, columns
    records = [dict(zip(columns, row)) for row in rows]
    assert sorted(int(x["trial"]) for x in records) == [0, 1, 2]
    assert all(x["state"] == "COMPLETE" for x in records)
    assert int(records[0]["trial"]) == study.best_trial.number  # best first
    assert float(records[0]["best_val_ndcg_10"]) == pytest.approx(study.best_value, abs=1e-4)
    assert [float(x["best_val_ndcg_10"]) for x in records] == sorted((float(x["best_val_ndcg_10"]) for x in records),
                                                                     reverse=True)
    assert all(0 < float(x["test_ndcg_10"]) <= 1 for x in records)

    images = [o for c in nb.cells for o in outputs_with(c, "image/png")]
    assert len(images) >= 2
    assert outputs_with(cell(nb, "trials-plot"), "image/png")
    assert outputs_with(cell(nb, "learning-curves"), "image/png")
    assert "optuna-dashboard sqlite:///optuna.db" in cell(nb, "conclusion").source
