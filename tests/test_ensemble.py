"""Ensembles of seeds (ensemble.seeds): real TensorFlow, real MLflow on sqlite, tiny synthetic data.

One ensemble of two members is trained once for the module (it takes most of the time) and
checked from several sides: the MLflow parent and child runs, the exported model's signatures
and scores against its members', its logged model and its metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ranking_exp.cli import preflight
from ranking_exp.config import register_configs
from ranking_exp.errors import ConfigError
from tests.helpers import compose_run, run_cli, tiny

SMALL = ["train.epochs=1", "scorer.hidden_layer_dims=[8]"]
NOT_SEEDS = "ensemble.seeds: must be null, a number of members N >= 2, or a list of seeds"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(run, cfg, result, tmp_path)`` of one 2-member ensemble (seeds 42, 43)."""
    from ranking_exp.experiment import run_training

    tmp_path = tmp_path_factory.mktemp("ensemble")
    run, cfg = compose_run(tmp_path, tiny([*SMALL, "ensemble.seeds=2", "ensemble.log_member_models=false"]))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="ens")
    return run, cfg, result, tmp_path


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_members_are_child_runs_of_one_parent_that_records_the_ensemble(trained):
    run, _, result, tmp_path = trained
    assert sorted(result.members) == [42, 43]  # seed .. seed + N - 1
    client = _client(tmp_path)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "ens-ensemble"
    assert parent.data.tags["ranking_exp.role"] == "ensemble" and parent.data.tags["ensemble.seeds"] == "42,43"
    assert parent.data.params["ensemble.seeds"] == "2"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["ens-seed42", "ens-seed43"]
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:  # each an ordinary run with its own config
        assert c.data.params["seed"] == c.data.tags["ensemble.seed"] and c.data.params["ensemble.seeds"] == "None"
        assert c.info.run_id == result.members[int(c.data.params["seed"])].run_id
        assert "val_ndcg_10" in c.data.metrics and "best_val_ndcg_10" in c.data.metrics

    m = parent.data.metrics
    # The ensemble's own metrics under a single run's names; the objective is its validation monitor.
    assert result.objective == m["best_val_ndcg_10"] == pytest.approx(result.metrics["best_val_ndcg_10"])
    assert 0 < m["test_ndcg_10"] <= 1 and m["ensemble_size"] == 2
    for name in ("best_val_ndcg_10", "test_map"):
        values = [c.data.metrics[name] for c in children]
        assert m[f"members_{name}_mean"] == pytest.approx(np.mean(values))
        assert m[f"members_{name}_std"] == pytest.approx(np.std(values, ddof=1))
    saved = json.loads((Path(run.output_dir) / "results.json").read_text())
    assert saved["run_id"] == result.run_id and saved["model_dir"] == result.exports["ensemble"]
    assert set(saved["members"]) == {"42", "43"}


def _inputs(data, n: int = 6):
    """Real inputs for every signature: ``serving_features`` tensors of ``n`` vali lists, and the
    same lists as serialized ELWC (``predict``) and as per-document tf.Examples (``regress``)."""
    import tensorflow as tf
    from tensorflow_serving.apis import input_pb2

    from ranking_exp.config import TrainConfig
    from ranking_exp.data.builder import RankingDatasetBuilder

    features, _ = next(iter(RankingDatasetBuilder(data, TrainConfig(eval_batch_size=n), 0).build_split_dataset("vali")))
    elwcs = [r.numpy() for r in tf.data.TFRecordDataset(data.split("vali").files).take(n)]
    examples = []
    for raw in elwcs:
        elwc = input_pb2.ExampleListWithContext.FromString(raw)
        for ex in elwc.examples:
            merged = tf.train.Example()
            merged.CopyFrom(ex)
            for key, value in elwc.context.features.feature.items():
                merged.features.feature[key].CopyFrom(value)
            examples.append(merged.SerializeToString())
    return {"serving_features": features, "tensorflow/serving/predict": {"inputs": tf.constant(elwcs)},
            "tensorflow/serving/regress": {"inputs": tf.constant(examples)},
            "serving_default": {"inputs": tf.constant(examples)}}


def test_the_export_has_a_members_signatures_and_scores_their_mean(trained):
    import tensorflow as tf

    from ranking_exp.data.sources import prepare
    from ranking_exp.ensemble import member_model_dir

    run, _, result, _ = trained
    export = Path(result.exports["ensemble"])
    member_spec = Path(member_model_dir(result.members[42])) / "feature_spec.json"
    assert (export / "feature_spec.json").read_text() == member_spec.read_text()
    manifest = json.loads((export / "ensemble.json").read_text())
    assert manifest["combine"] == "mean" and [m["seed"] for m in manifest["members"]] == [42, 43]

    ensemble = tf.saved_model.load(str(export))
    members = [tf.saved_model.load(member_model_dir(r)) for r in result.members.values()]
    assert set(ensemble.signatures) == set(members[0].signatures) == {
        "serving_default", "tensorflow/serving/regress", "tensorflow/serving/predict", "serving_features"}
    inputs = _inputs(prepare(run.dataset))
    for name, fn in ensemble.signatures.items():
        assert fn.structured_input_signature == members[0].signatures[name].structured_input_signature
        args = {k: v for k, v in inputs[name].items() if k in fn.structured_input_signature[1]}
        got = fn(**args)["outputs"].numpy()
        each = np.stack([m.signatures[name](**args)["outputs"].numpy() for m in members])
        assert not np.allclose(each[0], each[1])  # two different members
        np.testing.assert_allclose(got, each.mean(axis=0), rtol=1e-6, atol=1e-6, err_msg=name)


def test_the_ensemble_is_evaluated_like_a_run_and_served_by_mlflow_and_serve(trained):
    import mlflow
    import pandas as pd
    import tensorflow as tf

    from ranking_exp.data.sources import prepare
    from ranking_exp.ensemble import evaluate_export, member_model_dir
    from ranking_exp.serve.model import ServedModel

    run, _, result, tmp_path = trained
    data = prepare(run.dataset)
    # The evaluation path scores a member's export as its own run's evaluation did.
    member = result.members[43]
    again = evaluate_export(member_model_dir(member), data, run)
    for key in ("best_val_ndcg_10", "best_val_map", "test_ndcg_5"):
        assert again[key] == pytest.approx(member.metrics[key], rel=1e-5), key

    # The parent's logged model (the MLflow pyfunc) and the server both take the ensemble.
    features = _inputs(data, n=3)["serving_features"]
    fn = tf.saved_model.load(result.exports["ensemble"]).signatures["serving_features"]
    scores = fn(**features)["outputs"].numpy()
    mask = features["example_list_mask"].numpy()
    q, d = np.nonzero(mask)
    frame = {"qid": q.astype(str)}
    for f in data.spec.context:
        frame[f.name] = features[f.name].numpy()[q, 0]
    for f in data.spec.example:
        frame[f.name] = features[f.name].numpy()[q, d, 0]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    out = model.predict(pd.DataFrame(frame))
    np.testing.assert_allclose(out["score"].to_numpy(), scores[q, d], rtol=1e-5, atol=1e-6)

    served = ServedModel(Path(result.exports["ensemble"]), "ens")
    served.warm_up(max_batch=2, max_documents=5)


@pytest.mark.parametrize("overrides,message", [
    (["ensemble.seeds=1"], "ensemble.seeds: an ensemble needs at least 2 members (got 1)"),
    (["ensemble.seeds=[7]"], "ensemble.seeds: an ensemble needs at least 2 seeds (got [7])"),
    (["ensemble.seeds=[]"], "ensemble.seeds: an ensemble needs at least 2 seeds (got [])"),
    (["ensemble.seeds=[3,4,3]"], "ensemble.seeds: listed twice: 3"),
    (["ensemble.seeds=[1,-2]"], "ensemble.seeds: seeds must be whole numbers in [0, 4294967295] (got -2)"),
    (["ensemble.seeds=[1,2.5]"], "ensemble.seeds: seeds must be whole numbers in [0, 4294967295] (got 2.5)"),
    (["ensemble.seeds=five"], f"{NOT_SEEDS} (got 'five')"),
    (["ensemble.seeds=true"], f"{NOT_SEEDS} (got True)"),
    (["ensemble.seeds=3", "seed=4294967294"], "ensemble.seeds: the seeds seed..seed+N-1 must lie in [0, 4294967295]"),
    (["ensemble.seeds=3", "scorer=lightgbm"], "ensemble.seeds: ensembles are of neural scorers; scorer=lightgbm"),
    (["ensemble.seeds=3", "strategy=tpu"], "ensemble.seeds: members train one after another in this process"),
    (["ensemble.log_member_models=maybe"], "ensemble.log_member_models:"),
])
def test_bad_ensemble_settings_fail_in_one_line(overrides, message):
    register_configs()
    with pytest.raises(ConfigError) as e:
        preflight("config", overrides, multirun=False)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_good_ensemble_settings_pass_and_name_the_members_seeds():
    from hydra import compose, initialize_config_module

    from ranking_exp.config import to_run_config

    register_configs()
    with initialize_config_module("ranking_exp.conf", version_base="1.3"):
        for override, seeds in (("ensemble.seeds=3", [42, 43, 44]), ("ensemble.seeds=[5,1,9]", [5, 1, 9]),
                                ("ensemble.seeds=null", [])):
            cfg = compose("config", overrides=[override, "output_dir=x"])
            run = to_run_config(cfg)
            assert run.ensemble.member_seeds(run.seed) == seeds
            assert run.ensemble.enabled == bool(seeds)


def test_a_bad_seed_list_stops_the_command_before_anything_runs(tmp_path):
    r = run_cli(["ensemble.seeds=[1,1]"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: ensemble.seeds: listed twice: 1", r.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_cross_validation_of_ensembles(tmp_path):
    """dataset.folds with ensemble.seeds: every fold is an ensemble (CV parent > fold ensembles > members)."""
    import tensorflow as tf

    from ranking_exp.cv import run_cv
    from tests.test_lightgbm_cv import write_letor_folds

    root = write_letor_folds(tmp_path / "letor", folds=("Fold1", "Fold2"))
    run, cfg = compose_run(tmp_path, [
        "dataset=letor", f"dataset.path={root}", "dataset.folds=all", "dataset.progress=false", *SMALL,
        "train.verbose=0", "ensemble.seeds=[1,2]", "tracking.log_model=false", "export.best=false",
        "callbacks.tensorboard.enabled=false"])
    tf.keras.backend.clear_session()
    result = run_cv(run, cfg, launch_dir=str(tmp_path), run_name="dnn")
    assert list(result.folds) == ["Fold1", "Fold2"]
    for fold in result.folds.values():
        assert sorted(fold.members) == [1, 2] and Path(fold.exports["ensemble"], "saved_model.pb").exists()
    assert result.objective == pytest.approx(np.mean([f.objective for f in result.folds.values()]))
    assert result.metrics["test_ndcg_10_mean"] == pytest.approx(
        np.mean([f.metrics["test_ndcg_10"] for f in result.folds.values()]))
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id])
    assert len(runs) == 1 + 2 + 4
    by_id = {r.info.run_id: r for r in runs}
    for fold in result.folds.values():
        ens = by_id[fold.run_id]
        assert ens.data.tags["mlflow.parentRunId"] == result.run_id and ens.data.tags["ranking_exp.role"] == "ensemble"
        members = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == fold.run_id]
        assert sorted(r.data.params["seed"] for r in members) == ["1", "2"]
