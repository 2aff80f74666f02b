"""The real command on MQ2008 Fold1, then everything downstream of its model:
MLflow record, predict CLI (count, order, metrics), signatures in a fresh process, pyfunc."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import run_cli

pytestmark = pytest.mark.slow
EPOCHS = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mq2008_fold1):
    work = tmp_path_factory.mktemp("mq2008")
    r = run_cli(["dataset=letor", f"dataset.path={mq2008_fold1}", f"train.epochs={EPOCHS}",
                 "scorer.hidden_layer_dims=[64,32]", "tracking.experiment=mq2008"], cwd=work, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [results] = list(work.glob("outputs/*/*/results.json"))
    return work, json.loads(results.read_text()), r


def test_reaches_ndcg10_of_at_least_065_on_test(trained):
    _, results, r = trained
    assert results["metrics"]["test_ndcg_10"] >= 0.65
    assert f"Epoch {EPOCHS}/{EPOCHS}" in r.stdout  # Keras progress output
    assert "ndcg_10" in r.stdout + r.stderr  # summary table


def test_mlflow_run_reads_back_with_params_metrics_artifacts_and_model(trained):
    work, results, _ = trained
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "mq2008"
    p = run.data.params
    assert p["dataset.kind"] == "letor" and p["scorer.hidden_layer_dims"] == "[64, 32]"
    assert float(p["optimizer.learning_rate"]) == 0.001 and p["train.epochs"] == str(EPOCHS)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_ndcg_10")] == list(range(EPOCHS))
    assert run.data.metrics["test_ndcg_10"] == pytest.approx(results["metrics"]["test_ndcg_10"])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"hydra", "tensorboard"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "hydra")} >= {
        "hydra/config.yaml", "hydra/overrides.yaml"}
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    df = pd.DataFrame({"qid": ["a", "a", "b"], **{f"f{i}": [0.1, 0.9, 0.5] for i in range(1, 47)}})
    out = model.predict(df)
    assert list(out.columns) == ["score", "rank"] and len(out) == 3
    assert sorted(out["rank"][:2]) == [1, 2] and out["rank"][2] == 1


def _line_count(path: Path) -> int:
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        return sum(1 for _ in f)


@pytest.fixture(scope="module")
def predicted(trained, mq2008_fold1):
    work, results, _ = trained
    test_file = mq2008_fold1 / "test.txt.gz"
    r = run_cli(["model=" + results["model_dir"], f"input={test_file}", "output=scores.txt"], cwd=work,
                module="ranking_exp.predict", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, results, test_file, np.loadtxt(work / "scores.txt"), r.stdout


def test_predict_writes_one_score_per_line_and_the_same_metrics(predicted):
    work, results, test_file, scores, stdout = predicted
    assert len(scores) == _line_count(test_file)
    metrics = dict(kv.split("=") for kv in stdout.strip().splitlines()[-1].split())
    # Same model, same convention, a different path (LETOR text vs ELWC shards): same numbers.
    assert float(metrics["ndcg_10"]) == pytest.approx(results["metrics"]["test_ndcg_10"], abs=1e-4)
    assert float(metrics["map"]) == pytest.approx(results["metrics"]["test_map"], abs=1e-4)


def test_predict_keeps_input_order(predicted, tmp_path):
    work, results, test_file, scores, _ = predicted
    with gzip.open(test_file, "rt") as f:
        lines = f.readlines()
    queries: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        queries.setdefault(line.split()[1], []).append(i)
    order = [i for q in reversed(list(queries)) for i in queries[q]]  # queries reversed
    shuffled = tmp_path / "reversed.txt"
    shuffled.write_text("".join(lines[i] for i in order))
    r = run_cli(["model=" + results["model_dir"], f"input={shuffled}", f"output={tmp_path / 's.txt'}"],
                cwd=work, module="ranking_exp.predict")
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.txt"), scores[order], rtol=1e-5, atol=1e-6)


def test_predict_from_an_mlflow_uri_gives_the_same_scores(predicted, tmp_path):
    work, results, test_file, scores, _ = predicted
    r = run_cli([f"model=runs:/{results['run_id']}/model", f"input={test_file}", f"output={tmp_path / 'm.txt'}"],
                cwd=work, module="ranking_exp.predict")
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(np.loadtxt(tmp_path / "m.txt"), scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,message", [
    ("/no/such/dir", "error: model: /no/such/dir: no such directory"),
    ("runs:/0123456789abcdef/model", "error: model: cannot load 'runs:/0123456789abcdef/model' from MLflow"),
])
def test_predict_bad_model_is_one_line(trained, mq2008_fold1, tmp_path, model, message):
    work, _, _ = trained
    r = run_cli([f"model={model}", f"input={mq2008_fold1 / 'test.txt.gz'}", f"output={tmp_path / 'x.txt'}"],
                cwd=work, module="ranking_exp.predict")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
    assert not (tmp_path / "x.txt").exists()


SIGNATURE_CHECK = r'''
import json, sys
import numpy as np, tensorflow as tf
from tensorflow_serving.apis import input_pb2
path, features_json = sys.argv[1], sys.argv[2]
docs = np.array(json.loads(features_json), dtype=np.float32)  # one query: [n_docs, 46]
names = [f"f{i}" for i in range(1, 47)]
m = tf.saved_model.load(path)
def example(row):
    return tf.train.Example(features=tf.train.Features(feature={
        n: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for n, v in zip(names, row)}))
elwc = input_pb2.ExampleListWithContext()
for row in docs:
    elwc.examples.add().CopyFrom(example(row))
out = {}
out["predict"] = m.signatures["tensorflow/serving/predict"](tf.constant([elwc.SerializeToString()]))["outputs"].numpy()[0]
serialized = tf.constant([example(r).SerializeToString() for r in docs])
out["regress"] = m.signatures["tensorflow/serving/regress"](serialized)["outputs"].numpy()
out["serving_default"] = m.signatures["serving_default"](serialized)["outputs"].numpy()
inputs = {n: tf.constant(docs[None, :, j:j + 1]) for j, n in enumerate(names)}
inputs["example_list_mask"] = tf.ones([1, len(docs)], tf.bool)
out["serving_features"] = m.signatures["serving_features"](**inputs)["outputs"].numpy()[0]
print(json.dumps({k: v.reshape(-1).tolist() for k, v in out.items()}))
'''


def test_export_scores_equally_through_every_signature_in_a_fresh_process(predicted):
    work, results, test_file, scores, _ = predicted
    from ranking_exp.data.letor import read_letor

    first = next(read_letor(test_file))
    docs = first.dense(range(1, 47))[0]
    r = subprocess.run([sys.executable, "-c", SIGNATURE_CHECK, results["model_dir"], json.dumps(docs.tolist())],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    expected = scores[: first.num_docs]  # the predict CLI's scores for the file's first query
    for name in ("predict", "regress", "serving_default", "serving_features"):
        np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
