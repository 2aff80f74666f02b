"""`pip install .` as a wheel (not editable) in a new venv: configs ship, the command runs."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(REPO)], check=True, capture_output=True)
    [wheel] = list((tmp / "dist").glob("ranking_exp-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies come from this environment (no network needed); ranking_exp itself only from the wheel.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    return venv


def run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_installed_package_is_the_wheel(wheel_venv, tmp_path):
    r = run(wheel_venv, ["-c", "import ranking_exp; print(ranking_exp.__file__)"], tmp_path)
    assert str(wheel_venv) in r.stdout


def test_configs_ship_with_the_wheel(wheel_venv, tmp_path):
    r = run(wheel_venv, ["-m", "ranking_exp", "--cfg", "job", "scorer=gam", "loss=list_mle"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "example_hidden_layer_dims" in r.stdout and "list_mle_loss" in r.stdout
    r = run(wheel_venv, ["-m", "ranking_exp", "scorer=foo"], tmp_path)
    assert r.stderr.strip() == "error: scorer=foo: no such option (choose from custom, dasalc, dnn, gam, lightgbm, linear)"
    r = run(wheel_venv, ["-m", "ranking_exp.predict", "--cfg", "job", "model=m", "input=i", "output=o"], tmp_path)
    assert r.returncode == 0 and "tracking_uri" in r.stdout


def test_sweeper_plugin_and_sweeps_ship_with_the_wheel(wheel_venv, tmp_path):
    r = run(wheel_venv, ["-m", "ranking_exp", "+sweep=dnn_softmax", "--cfg", "hydra", "-p", "hydra.sweeper"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "hydra_plugins.ranking_exp_sweeper.sweeper.RankingOptunaSweeper" in r.stdout
    assert "study_name: dnn_softmax" in r.stdout


def test_a_tiny_run_from_the_wheel(wheel_venv, tmp_path):
    r = run(wheel_venv, ["-m", "ranking_exp", "train.epochs=1", "dataset.num_train=60", "dataset.num_vali=20",
                         "dataset.num_test=20", "scorer.hidden_layer_dims=[8]", "train.verbose=0"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists() and list(tmp_path.glob("outputs/*/*/export/best_model_by_metric"))
