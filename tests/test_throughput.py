"""Fast training: packed scoring gives TF Ranking's scores while computing real documents only;
every run records its speed; the throughput benchmark runs end to end (smoke size)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_ranking as tfr
from mlflow.tracking import MlflowClient

from ranking_exp.experiment import run_training
from ranking_exp.model.packing import PADDING_SCORE, PackedScorer, pack
from tests.helpers import REPO, compose_run, tiny, load_benchmark


def _model(scorer, num_features=3):
    builder = tfr.keras.model.ModelBuilder(
        input_creator=tfr.keras.model.FeatureSpecInputCreator(
            {"q": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])},
            {f"x{i}": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]) for i in range(num_features)}),
        preprocessor=tfr.keras.model.PreprocessorWithSpec({}),
        scorer=scorer, mask_feature_name="mask", name="m")
    return builder.build()


def _batch(rng, lengths, width, num_features=3):
    mask = np.zeros((len(lengths), width), dtype=bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    features = {f"x{i}": rng.normal(size=(len(lengths), width, 1)).astype(np.float32) for i in range(num_features)}
    features["q"] = rng.normal(size=(len(lengths), 1)).astype(np.float32)
    features["mask"] = mask
    return features, mask


@pytest.mark.parametrize("make", [
    lambda: tfr.keras.model.DNNScorer(hidden_layer_dims=[8, 4], output_units=1, use_batch_norm=True, dropout=0.3),
    lambda: tfr.keras.model.GAMScorer(example_hidden_layer_dims=[4], context_hidden_layer_dims=[4]),
])
def test_packed_scores_equal_tf_rankings_own_and_padding_gets_its_score(make):
    tf.keras.utils.set_random_seed(0)
    plain = _model(make())
    packed = _model(pack(make()))
    assert isinstance(pack(make()), PackedScorer)
    packed.set_weights(plain.get_weights())
    features, mask = _batch(np.random.default_rng(0), [5, 1, 3, 7], width=7)
    expected = plain(features, training=False).numpy()
    got = packed(features, training=False).numpy()
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[~mask], PADDING_SCORE)
    np.testing.assert_allclose(expected[~mask], PADDING_SCORE)


def test_packed_tower_sees_only_real_documents():
    """The point of packing: the Dense layers run on sum(lengths) rows, not batch * list_size."""
    seen = []

    class Spy(tfr.keras.model.UnivariateScorer):
        def _score_flattened(self, context_features, example_features):
            x = tf.concat([example_features[k] for k in sorted(example_features)], axis=-1)
            x = tf.keras.layers.Lambda(lambda t: (seen.append(1), t)[1])(x)
            return tf.keras.layers.Dense(1)(x)

    lengths = [5, 1, 3, 7]
    features, _ = _batch(np.random.default_rng(1), lengths, width=40)
    counts = {}
    for name, scorer in (("plain", Spy()), ("packed", pack(Spy()))):
        model = _model(scorer)
        dense = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)][0]
        probe = tf.keras.Model(model.inputs, dense.input)
        counts[name] = int(probe(features).shape[0])
    assert counts == {"plain": 4 * 40, "packed": sum(lengths)}


def test_padded_to_a_fixed_list_size_or_not_the_packed_model_scores_the_same():
    tf.keras.utils.set_random_seed(0)
    model = _model(pack(tfr.keras.model.DNNScorer(hidden_layer_dims=[8], output_units=1)))
    features, mask = _batch(np.random.default_rng(2), [2, 4], width=4)
    wide = {k: (np.pad(v, [(0, 0), (0, 6)] + [(0, 0)] * (v.ndim - 2)) if k != "q" else v) for k, v in features.items()}
    a = model(features, training=False).numpy()
    b = model(wide, training=False).numpy()
    np.testing.assert_allclose(b[:, :4][mask], a[mask], rtol=1e-6)


def test_every_run_records_its_training_speed_per_epoch(tmp_path):
    run, cfg = compose_run(tmp_path, tiny(["train.epochs=2"]))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="speed")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    speed = client.get_metric_history(result.run_id, "train_docs_per_sec")
    seconds = client.get_metric_history(result.run_id, "train_seconds_epoch")
    assert [m.step for m in speed] == [0, 1] and all(m.value > 0 for m in speed)
    # docs/s x seconds = the real documents of the training split, every epoch
    from ranking_exp.data.sources import prepare

    docs = prepare(run.dataset).split("train").num_docs
    for s, t in zip(speed, seconds):
        assert s.value * t.value == pytest.approx(docs, rel=1e-6)


def test_training_matches_the_unpacked_model_in_quality(tmp_path):
    """Packing changes the compute, not what is learnt: same data, same seed, both sides of
    the switch reach about the same validation NDCG (batch-norm statistics differ slightly)."""
    scores = {}
    for pack_lists in ("true", "false"):
        d = tmp_path / pack_lists
        run, cfg = compose_run(d, tiny(["train.epochs=3", f"model.pack_lists={pack_lists}",
                                        "tracking.log_model=false"]))
        scores[pack_lists] = run_training(run, cfg, launch_dir=str(d), run_name=pack_lists).objective
    assert abs(scores["true"] - scores["false"]) < 0.05, scores


def _lists(dataset):
    """(number of real documents, sum of labels) of every list the dataset yields."""
    out = []
    for features, labels in dataset:
        labels = labels.numpy()
        for row in labels:
            real = row[row >= 0]
            out.append((len(real), round(float(real.sum()), 3)))
    return out


@pytest.mark.parametrize("list_size", [None, 6])
def test_parsed_once_training_data_holds_every_list_each_epoch_reshuffled(tmp_path, list_size):
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare

    run, _ = compose_run(tmp_path, tiny([f"train.list_size={list_size or 'null'}", "train.batch_size=16"]))
    data = prepare(run.dataset)
    builder = RankingDatasetBuilder(data, run.train, run.seed)
    train = builder.build_train_dataset()
    whole = _lists(builder.build_split_dataset("train"))  # file order, whole lists
    expected = sorted(whole) if list_size is None else None
    epochs = [_lists(train), _lists(train)]
    for epoch in epochs:
        assert len(epoch) == data.split("train").num_lists
        if expected is not None:
            assert sorted(epoch) == expected
        else:  # TF Ranking's rule: the first list_size documents of each list
            assert sorted(n for n, _ in epoch) == sorted(min(n, list_size) for n, _ in whole)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    for features, labels in train.take(2):
        mask = features[data.spec.mask_name].numpy()
        assert mask.shape == labels.shape
        assert ((labels.numpy() >= 0) == mask).all()  # padding: label < 0 exactly where masked
        if list_size is not None:
            assert labels.shape[1] == list_size


def test_without_the_cache_training_reads_through_tf_rankings_parser_and_still_learns(tmp_path):
    run, cfg = compose_run(tmp_path, tiny(["train.cache=none", "train.epochs=3", "tracking.log_model=false"]))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="nocache")
    assert result.objective > 0.6


@pytest.mark.slow
def test_throughput_benchmark_smoke_run_writes_its_results(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--smoke",
                           "--out", str(out), "--workdir", str(tmp_path / "work")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["matmul_gflops"] > 0
    (d,) = results["datasets"]
    for path in ("recipe", "ranking_exp"):
        assert d[path]["docs_per_sec"]["steady"] > 0
        assert 0.0 <= d[path]["val"]["ndcg_10"] <= 1.0
        assert 0.0 <= d[path]["val_ndcg_10_mean"] <= 1.0 and len(d[path]["val_ndcg_10_all_repeats"]) == d["repeats"]
        assert len(d[path]["epoch_seconds"]) == 2
    assert d["ratio_steady"] > 0 and math.isfinite(d["ratio_steady"])
    conversion = results["conversion"]
    for k in ("ranking_exp", "sklearn_load_svmlight_file"):
        assert conversion[k]["peak_rss_mb"] > 0 and conversion[k]["mb_per_sec"] > 0
    assert "ratio" in proc.stdout and "FLOP bound" in proc.stdout
    assert set(d["goals_met"]) == {"ratio", "flop_bound", "val_ndcg"} and "goals (issue 6)" in proc.stdout


def _throughput_module():
    return load_benchmark(REPO / "benchmarks" / "throughput.py")


def test_ndcg_comparison_tells_noise_from_a_real_difference():
    compare = _throughput_module().compare_ndcg
    recipe = [0.70, 0.72, 0.69, 0.71]
    assert compare(recipe, [0.71, 0.73, 0.70, 0.72])["verdict"] == "better"
    # 0.005 below, with seeds spread by ~0.013: not significantly worse
    close = compare(recipe, [0.695, 0.715, 0.685, 0.705])
    assert close["verdict"] == "equal within noise" and close["diff"] == pytest.approx(-0.005)
    assert close["stderr"] == pytest.approx(math.sqrt(2 * np.var(recipe, ddof=1) / 4))
    # 0.03 below with the same spread: worse
    assert compare(recipe, [0.67, 0.69, 0.66, 0.68])["verdict"] == "worse"
    assert compare([0.70], [0.69])["verdict"] == "unknown"
