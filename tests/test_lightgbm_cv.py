"""The LightGBM LambdaMART baseline (scorer=lightgbm) and k-fold cross-validation (dataset.folds):
real LightGBM, real MLflow on sqlite, real commands; tiny LETOR folds written here."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ranking_exp.cli import preflight
from ranking_exp.config import register_configs
from ranking_exp.errors import ConfigError
from tests.helpers import TINY, compose_run, run_cli

FOLDS = ("Fold1", "Fold2", "Fold3")


def write_letor_folds(root: Path, folds=FOLDS, seed: int = 0) -> Path:
    """Tiny LETOR folds (train 40, vali 15, test 15 queries of 8 documents, 5 features, labels
    0-2 from a hidden linear score plus noise; a few queries without a relevant document)."""
    rng = np.random.default_rng(seed)
    weights = np.array([1.5, -1.0, 0.8, 0.0, 0.3])
    qid = 0
    for fold in folds:
        (root / fold).mkdir(parents=True)
        for split, n in (("train", 40), ("vali", 15), ("test", 15)):
            lines = []
            for _ in range(n):
                qid += 1
                x = rng.random((8, 5))
                latent = x @ weights + rng.normal(0, 0.3, 8) + rng.normal(0, 0.5)
                labels = np.digitize(latent, [0.9, 1.5])
                for d in range(8):
                    feats = " ".join(f"{j + 1}:{x[d, j]:.4f}" for j in range(5))
                    lines.append(f"{labels[d]} qid:{qid} {feats} #docid = d{qid}_{d}")
            (root / fold / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_lightgbm_on_synthetic_beats_random_and_records_like_a_neural_run(tmp_path):
    import mlflow
    import pandas as pd

    from ranking_exp.data.sources import prepare
    from ranking_exp.experiment import run_training
    from ranking_exp.gbdt import feature_columns, load_split
    from ranking_exp.metrics import evaluate_lists

    run, cfg = compose_run(tmp_path, [*TINY, "scorer=lightgbm", "train.threads=1"])
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="lgbm")

    # The metric names a neural run records at the end (experiment._train_and_record).
    names = run.metrics.names()
    neural = {f"best_val_{n}" for n in names} | {f"test_{n}" for n in names} | {"train_seconds"}
    assert neural <= set(result.metrics)
    assert result.objective == result.metrics["best_val_ndcg_10"]

    data = prepare(run.dataset)
    test = load_split(data, "test")
    labels = [q.astype(np.float32) for q in test.per_query(test.y)]
    rng = np.random.default_rng(0)
    random = np.mean([evaluate_lists(labels, [rng.random(len(q)) for q in labels], run.metrics)["ndcg_10"]
                      for _ in range(5)])
    assert result.metrics["test_ndcg_10"] > random + 0.15, (result.metrics["test_ndcg_10"], random)

    client = _client(tmp_path)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "lgbm"
    assert r.data.params["scorer.kind"] == "lightgbm" and r.data.params["scorer.num_leaves"] == "31"
    assert not any(p.startswith(("loss.", "optimizer.")) for p in r.data.params)  # they don't apply
    for name in neural:
        assert r.data.metrics[name] == pytest.approx(result.metrics[name])
    history = client.get_metric_history(result.run_id, "lightgbm_val_ndcg_10")
    assert len(history) >= result.metrics["best_iteration"] and history[0].step == 0

    saved = json.loads((Path(run.output_dir) / "results.json").read_text())
    assert saved["metrics"]["test_ndcg_10"] == pytest.approx(result.metrics["test_ndcg_10"])
    assert (Path(result.exports["best"]) / "model.txt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    scores = np.asarray(model.predict(pd.DataFrame(test.x[:20].astype(np.float64), columns=feature_columns(data.spec))))
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(Path(result.exports["best"]) / "model.txt"))
    np.testing.assert_allclose(scores.reshape(-1), booster.predict(test.x[:20]), rtol=1e-6)


@pytest.mark.parametrize("overrides,message", [
    (["scorer=lightgbm", "scorer.subsample=0.8"], "scorer.subsample: 0.8 < 1 needs scorer.subsample_freq > 0"),
    (["scorer=lightgbm", "metrics.monitor=map"], "metrics.monitor: scorer=lightgbm stops early on LightGBM's ndcg@k"),
    (["scorer=lightgbm", "scorer.num_leaves=1"], "scorer.num_leaves: must be > 1"),
    (["scorer=lightgbm", "+scorer.params.objective=regression"], "scorer.params.objective: is set by ranking_exp"),
    (["metrics.convention=trec"], "metrics.convention: 'trec' not in standard, letor"),
    (["metrics.convention=letor", "metrics.lists_without_relevant=skip"],
     "metrics.lists_without_relevant: metrics.convention=letor counts queries without a relevant document as 0"),
])
def test_lightgbm_and_metric_mistakes_fail_in_one_line(overrides, message):
    register_configs()
    with pytest.raises(ConfigError) as e:
        preflight("config", overrides, multirun=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_shipped_lightgbm_sweep_passes_its_checks():
    from hydra import compose, initialize_config_module

    from hydra_plugins.ranking_exp_sweeper.sweeper import RankingOptunaSweeper

    register_configs()
    with initialize_config_module("ranking_exp.conf", version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=lightgbm_mq2008"], return_hydra_config=True)
    assert cfg.scorer.kind == "lightgbm" and cfg.dataset.kind == "letor"
    RankingOptunaSweeper.preflight(cfg.hydra.sweeper, cfg, [])
    assert set(cfg.hydra.sweeper.params) == {"scorer.num_leaves", "scorer.learning_rate", "scorer.min_child_samples",
                                             "scorer.subsample", "scorer.colsample_bytree"}


def test_a_missing_fold_fails_in_one_line_before_any_training(tmp_path):
    root = write_letor_folds(tmp_path / "letor")
    r = run_cli(["dataset=letor", f"dataset.path={root}", "dataset.folds=[Fold1,Fold9]"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: dataset.folds: no fold 'Fold9' in {root} (found Fold1, Fold2, Fold3)", r.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("folds,message", [
    ("[Fold1,Fold1]", "dataset.folds: listed twice: Fold1"),
    ("some", "dataset.folds: must be a list of fold folders or 'all' (got 'some')"),
    ("[]", "dataset.folds: empty list"),
])
def test_bad_fold_lists_fail_in_one_line(tmp_path, folds, message):
    root = write_letor_folds(tmp_path / "letor")
    register_configs()
    with pytest.raises(ConfigError) as e:
        preflight("config", ["dataset=letor", f"dataset.path={root}", f"dataset.folds={folds}"], multirun=False)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_all_folds_are_found_in_natural_order(tmp_path):
    from ranking_exp.data.folds import resolve_folds

    root = write_letor_folds(tmp_path / "letor", folds=("Fold10", "Fold2", "Fold1"))
    (root / "notes").mkdir()  # not a fold: no train file
    assert [n for n, _ in resolve_folds(str(root), "all")] == ["Fold1", "Fold2", "Fold10"]
    (root / "Fold2" / "vali.txt").unlink()
    with pytest.raises(ConfigError, match=re.escape(f"dataset.folds: {root}/Fold2 has no vali.txt or vali.txt.gz")):
        resolve_folds(str(root), "all")


@pytest.mark.slow
def test_cross_validation_records_a_parent_with_mean_and_std_and_a_child_per_fold(tmp_path):
    root = write_letor_folds(tmp_path / "letor")
    r = run_cli(["scorer=lightgbm", "dataset=letor", f"dataset.path={root}", "dataset.folds=all",
                 "dataset.progress=false", "train.threads=1", "train.verbose=0", "tracking.log_model=false"],
                cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    [cv_file] = list(tmp_path.glob("outputs/*/*/cv_results.json"))
    cv = json.loads(cv_file.read_text())
    assert list(cv["folds"]) == list(FOLDS)
    assert (cv_file.parent / "Fold2" / "results.json").exists()

    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id])
    [parent] = [x for x in runs if x.data.tags.get("ranking_exp.role") == "cv"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 4 and parent.info.run_id == cv["run_id"]
    assert sorted(c.data.tags["cv.fold"] for c in children) == list(FOLDS)
    assert all(c.info.status == "FINISHED" for c in [parent, *children])
    assert {Path(c.data.params["dataset.path"]).name for c in children} == set(FOLDS)
    assert parent.data.tags["cv.folds"] == "Fold1,Fold2,Fold3" and parent.data.params["dataset.folds"] == "all"

    for metric in ("test_ndcg_10", "best_val_ndcg_10", "test_map", "best_val_mrr"):
        values = [c.data.metrics[metric] for c in children]
        assert parent.data.metrics[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert parent.data.metrics[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
    # The objective is the mean *validation* metric: test folds never steer a choice.
    assert cv["objective"] == pytest.approx(np.mean([c.data.metrics["best_val_ndcg_10"] for c in children]))
    assert "test (mean ± std)" in r.stdout + r.stderr
    assert "cv_results.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_the_lightgbm_sweep_runs_trials_through_the_optuna_sweeper(tmp_path):
    root = write_letor_folds(tmp_path / "letor", folds=("Fold1",))
    r = run_cli(["-m", "+sweep=lightgbm_mq2008", f"dataset.path={root}/Fold1", "dataset.progress=false",
                 "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", "train.threads=1",
                 "train.verbose=0", "tracking.log_model=false", "hydra.sweep.dir=multirun/sweep"],
                cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="lightgbm_mq2008", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id])
    trials = [x for x in runs if "optuna_trial" in x.data.tags]
    assert len(trials) == 2
    by_number = {int(t.data.tags["optuna_trial"]): t for t in trials}
    for t in study.get_trials():
        run = by_number[t.number]
        assert run.data.params["scorer.num_leaves"] == str(t.params["scorer.num_leaves"])
        assert run.data.metrics["best_val_ndcg_10"] == pytest.approx(t.value)


@pytest.mark.slow
def test_cross_validation_of_a_neural_scorer_under_the_letor_convention(tmp_path):
    import tensorflow as tf

    from ranking_exp.cv import run_cv

    root = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    run, cfg = compose_run(tmp_path, [
        "dataset=letor", f"dataset.path={root}", "dataset.folds=all", "dataset.progress=false",
        "train.epochs=1", "train.verbose=0", "scorer.hidden_layer_dims=[8]", "metrics.convention=letor",
        "metrics.monitor=ndcg_5", "tracking.log_model=false", "export.best=false"])
    tf.keras.backend.clear_session()
    result = run_cv(run, cfg, launch_dir=str(tmp_path), run_name="dnn")
    assert list(result.folds) == ["Fold1", "Fold2"]
    for fold in result.folds.values():
        assert fold.metrics["test_ndcg_10"] == 0.0  # LETOR 4.0: every query has fewer than 10 documents
        assert 0 < fold.metrics["test_ndcg_5"] <= 1
        assert Path(fold.exports["last"], "saved_model.pb").exists()
    assert result.objective == pytest.approx(np.mean([f.metrics["best_val_ndcg_5"] for f in result.folds.values()]))
    client = _client(tmp_path)
    parent = client.get_run(result.run_id)
    assert parent.info.run_name == "dnn-cv" and parent.data.params["metrics.convention"] == "letor"
    assert parent.data.metrics["test_ndcg_5_std"] == pytest.approx(
        np.std([f.metrics["test_ndcg_5"] for f in result.folds.values()], ddof=1))
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["dnn-Fold1", "dnn-Fold2"]
