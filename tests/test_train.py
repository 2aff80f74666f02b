"""Short real runs in-process: each scorer, plug-ins, seeds, strategies, failure states."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from ranking_exp.errors import ConfigError
from ranking_exp.experiment import run_training
from tests.helpers import TINY, compose_run, tiny


@pytest.fixture(autouse=True)
def fresh_keras():
    tf.keras.backend.clear_session()
    yield


def train(tmp_path: Path, overrides: list[str]):
    run, cfg = compose_run(tmp_path, tiny(overrides))
    return run, run_training(run, cfg, launch_dir=str(tmp_path), run_name="test")


def mlflow_run(tmp_path: Path, run_id: str):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)


@pytest.mark.parametrize("scorer", ["dnn", "gam", "linear"])
def test_short_run_per_scorer_trains_exports_and_records(tmp_path, scorer):
    run, cfg = compose_run(tmp_path, tiny([f"scorer={scorer}"]))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="test")
    for kind in ("last", "best"):
        export = Path(result.exports[kind])
        assert (export / "saved_model.pb").exists() and (export / "feature_spec.json").exists()
    assert {f"test_ndcg_{k}" for k in (1, 3, 5, 10)} | {"test_map", "test_mrr"} <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.objective == result.metrics["best_val_ndcg_10"]
    saved = json.loads((Path(run.output_dir) / "results.json").read_text())
    assert saved["metrics"]["test_ndcg_10"] == pytest.approx(result.metrics["test_ndcg_10"])
    r = mlflow_run(tmp_path, result.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["scorer.kind"] == scorer
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(result.run_id, "val_ndcg_10")
    assert [m.step for m in history] == [0, 1]


def test_best_export_holds_the_best_epoch_weights(tmp_path):
    run, result = train(tmp_path, ["train.epochs=3", "optimizer.learning_rate=0.05"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    per_epoch = [m.value for m in client.get_metric_history(result.run_id, "val_ndcg_10")]
    assert result.metrics["best_val_ndcg_10"] == pytest.approx(max(per_epoch), abs=1e-4)


def test_same_seed_repeats_and_another_seed_differs(tmp_path):
    _, a = train(tmp_path / "a", ["seed=3", "tracking.log_model=false"])
    _, b = train(tmp_path / "b", ["seed=3", "tracking.log_model=false"])
    _, c = train(tmp_path / "c", ["seed=4", "tracking.log_model=false"])
    assert a.metrics["test_ndcg_10"] == b.metrics["test_ndcg_10"]
    assert a.metrics["best_val_map"] == b.metrics["best_val_map"]
    assert a.metrics["test_ndcg_10"] != c.metrics["test_ndcg_10"]


def test_a_crash_inside_the_run_marks_it_failed(tmp_path):
    run, cfg = compose_run(tmp_path, tiny(["scorer=custom", "scorer.target=tests.plugins.ExplodingScorer"]))
    with pytest.raises(RuntimeError, match="boom"):
        run_training(run, cfg, launch_dir=str(tmp_path), run_name="crash")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize("overrides", [
    ["scorer=custom", "scorer.target=tests.plugins.TinyScorer", "+scorer.kwargs.units=3"],
    ["preprocess.custom=tests.plugins.clipping_preprocessor", "+preprocess.custom_kwargs.limit=2.0"],
    ["model.builder=tests.plugins.WrappedKerasModel", "+model.builder_kwargs.units=4"],
], ids=["scorer", "preprocessor", "model_builder"])
def test_user_code_plugs_in_by_import_path(tmp_path, overrides):
    run, result = train(tmp_path, [*overrides, "tracking.log_model=false", "export.best=false"])
    assert math.isfinite(result.metrics["test_ndcg_10"])
    loaded = tf.saved_model.load(result.exports["last"])
    assert "serving_features" in loaded.signatures


@pytest.mark.parametrize("overrides,message", [
    (["scorer=custom", "scorer.target=tests.plugins.Missing"], "scorer.target: cannot import 'tests.plugins.Missing'"),
    (["scorer=custom", "scorer.target=no_such_pkg.Scorer"], "scorer.target: cannot import 'no_such_pkg.Scorer'"),
    (["model.builder=tests.plugins.NOT_CALLABLE"], "model.builder: 'tests.plugins.NOT_CALLABLE' is a int"),
    (["preprocess.features=[{name: nope, standardize: true}]"], "preprocess.features[0].name: no feature 'nope'"),
])
def test_bad_user_code_or_feature_names_fail_at_start(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(tmp_path, overrides)
    assert not (tmp_path / "run" / "export").exists()


def test_standardization_uses_training_statistics(tmp_path):
    from ranking_exp.config import FeatureTransform
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.elwc import read_elwc
    from ranking_exp.data.sources import prepare
    from ranking_exp.model.preprocess import fit_statistics, signed_log1p

    run, _ = compose_run(tmp_path, TINY)
    data = prepare(run.dataset)
    builder = RankingDatasetBuilder(data, run.train, seed=0)
    name = data.spec.example_names[0]
    stats = fit_statistics(builder.build_split_dataset("train"), data.spec,
                           {name: FeatureTransform(log1p=True, standardize=True)})
    values = np.concatenate([ex[name].reshape(-1) for _, ex, _ in read_elwc(data.split("train").files, data.spec)])
    expected = signed_log1p(tf.constant(values, tf.float64)).numpy()
    mean, std = stats[name].mean, stats[name].std
    assert mean[0] == pytest.approx(expected.mean(), rel=1e-4)
    assert std[0] == pytest.approx(expected.std(), rel=1e-4)


def test_mirrored_strategy_trains(tmp_path):
    run, result = train(tmp_path, ["strategy=mirrored", "train.epochs=1", "tracking.log_model=false"])
    assert math.isfinite(result.metrics["test_ndcg_10"])


def test_every_loss_builds_and_gives_a_finite_value():
    from ranking_exp.config import LAMBDA_LOSSES, LOSS_KEYS, LossConfig
    from ranking_exp.train.pipeline import build_loss

    labels = tf.constant([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 0.0]])
    scores = tf.constant([[0.3, -0.2, 0.9, 0.0], [0.1, 0.4, -1.0, 0.2]])
    for key in LOSS_KEYS:
        lw = "ndcg" if key in LAMBDA_LOSSES and key != "list_mle_loss" else None
        value = build_loss(LossConfig(key=key, lambda_weight=lw))(labels, scores)
        assert np.isfinite(value.numpy()), key


def test_softmax_label_gain_targets_the_ndcg_gain():
    from ranking_exp.config import LossConfig
    from ranking_exp.train.pipeline import build_loss

    labels = tf.constant([[2.0, 0.0, 1.0, -1.0]])  # the last document is padding
    scores = tf.constant([[0.3, -0.2, 0.9, 5.0]])
    log_p = tf.nn.log_softmax(scores[:, :3]).numpy()[0]

    def expected(gains):  # TF Ranking weighs each list's cross entropy by its target's sum
        return -np.sum(np.asarray(gains) * log_p)

    plain = build_loss(LossConfig(key="softmax_loss"))(labels, scores).numpy()
    gain = build_loss(LossConfig(key="softmax_loss", label_gain="exp2"))(labels, scores).numpy()
    assert plain == pytest.approx(expected([2.0, 0.0, 1.0]), rel=1e-5)
    assert gain == pytest.approx(expected([3.0, 0.0, 1.0]), rel=1e-5)
    # a list of 0/1 labels is unchanged: 2^1 - 1 = 1
    binary = tf.constant([[1.0, 0.0, 1.0, -1.0]])
    assert build_loss(LossConfig(key="softmax_loss", label_gain="exp2"))(binary, scores).numpy() == \
        pytest.approx(build_loss(LossConfig(key="softmax_loss"))(binary, scores).numpy(), rel=1e-6)


def test_softmax_equal_list_weights_weigh_every_list_the_same():
    from ranking_exp.config import LossConfig
    from ranking_exp.train.pipeline import build_loss

    labels = tf.constant([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    scores = tf.constant([[0.3, -0.2, 0.9, 5.0], [0.1, 0.4, -1.0, 0.2], [0.5, 0.1, 0.2, 0.0]])
    ce = []  # each list's cross entropy toward its normalized target; the third has no relevant document
    for y, s in zip(labels.numpy()[:2], scores.numpy()[:2]):
        valid = y >= 0
        log_p = tf.nn.log_softmax(s[valid]).numpy()
        ce.append((y[valid], log_p))

    def expected(gain, weigh):
        out = 0.0
        for y, log_p in ce:
            g = gain(y)
            out += -np.sum(g / g.sum() * log_p) * weigh(g)
        return out / 3  # Keras' default reduction: the weighted sum over the lists / the batch's 3 lists

    def loss(**kw):
        return build_loss(LossConfig(key="softmax_loss", **kw))(labels, scores).numpy()

    assert loss() == pytest.approx(expected(lambda y: y, np.sum), rel=1e-5)
    assert loss(list_weights="equal") == pytest.approx(expected(lambda y: y, lambda g: 1.0), rel=1e-5)
    assert loss(label_gain="exp2", list_weights="equal") == pytest.approx(
        expected(lambda y: 2.0 ** y - 1, lambda g: 1.0), rel=1e-5)


def test_every_optimizer_and_schedule_builds_with_the_configured_rates():
    from ranking_exp.config import OptimizerConfig, ScheduleConfig
    from ranking_exp.train.optimizer import build_optimizer, learning_rate

    for fused, kinds in ((True, tf.keras.optimizers.legacy), (False, tf.keras.optimizers)):
        classes = {"adam": kinds.Adam, "adagrad": kinds.Adagrad, "sgd": kinds.SGD}
        for name, cls in classes.items():
            assert isinstance(build_optimizer(OptimizerConfig(name=name, momentum=0.9, fused=fused)), cls)
        opt = build_optimizer(OptimizerConfig(name="sgd", momentum=0.9, fused=fused))
        assert float(tf.keras.backend.get_value(opt.momentum)) == pytest.approx(0.9)

    def lr_at(kind, step, **kw):
        lr = learning_rate(0.1, ScheduleConfig(kind=kind, decay_steps=100, **kw))
        return float(lr(tf.constant(step)) if callable(lr) else lr)

    assert lr_at("constant", 50) == pytest.approx(0.1)
    assert lr_at("exponential", 100, decay_rate=0.5) == pytest.approx(0.05)
    assert lr_at("cosine", 100, alpha=0.1) == pytest.approx(0.01)
    assert lr_at("cosine_restarts", 50) < 0.1
    assert lr_at("linear_warmup_cosine", 0, warmup_steps=10) == pytest.approx(0.01)
    assert lr_at("linear_warmup_cosine", 10, warmup_steps=10) == pytest.approx(0.1)

    # decay_steps=auto: over the run's steps (after the warm-up), whatever its epochs and data
    def auto_at(kind, step, run_steps, **kw):
        return float(learning_rate(0.1, ScheduleConfig(kind=kind, decay_steps="auto", **kw), run_steps)(tf.constant(step)))

    assert auto_at("cosine", 150, 300) == pytest.approx(0.05)
    assert auto_at("cosine", 300, 300) == pytest.approx(0.0, abs=1e-6) and auto_at("cosine", 300, 600) == pytest.approx(0.05)
    assert auto_at("linear_warmup_cosine", 10 + 145, 300, warmup_steps=10) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="decay_steps: auto needs the run's number of steps"):
        learning_rate(0.1, ScheduleConfig(kind="cosine", decay_steps="auto"), None)


@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd"])
def test_weight_decay_shrinks_matrices_not_biases_the_same_in_both_optimizer_kinds(name):
    """optimizer.weight_decay is AdamW's decoupled decay: w -= lr_t * wd * w before the gradient step, on
    rank >= 2 variables only; the fused legacy optimizers (which have none) get exactly what Keras's
    new ones do, so optimizer.fused stays a speed knob."""
    from ranking_exp.config import OptimizerConfig, ScheduleConfig
    from ranking_exp.train.optimizer import build_optimizer, build_slots

    rng = np.random.default_rng(0)
    grads = [(rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=2).astype("float32")) for _ in range(4)]

    def after_steps(fused: bool, wd: float, zero_grads: bool = False):
        w, b = tf.Variable(np.full((3, 2), 2.0, "float32")), tf.Variable(np.full(2, 2.0, "float32"))
        cosine = ScheduleConfig(kind="cosine", decay_steps=8)
        opt = build_optimizer(OptimizerConfig(name=name, learning_rate=0.1, momentum=0.5, weight_decay=wd,
                                              fused=fused, schedule=cosine))
        build_slots(opt, [w, b])
        for gw, gb in grads:
            if zero_grads:
                gw, gb = np.zeros_like(gw), np.zeros_like(gb)
            opt.apply_gradients([(tf.constant(gw), w), (tf.constant(gb), b)])
        return w.numpy(), b.numpy()

    # no gradient: matrices shrink by prod(1 - lr_t * wd) over the cosine's steps, biases stay put
    lrs = [0.1 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(4)]
    for fused in (True, False):
        w, b = after_steps(fused, 0.5, zero_grads=True)
        np.testing.assert_allclose(w, 2.0 * np.prod([1 - lr * 0.5 for lr in lrs]), rtol=1e-6)
        np.testing.assert_allclose(b, 2.0)
    # with gradients: both kinds agree, and decay moved the matrix (not the bias) off the plain run
    legacy, new, plain = after_steps(True, 0.5), after_steps(False, 0.5), after_steps(True, 0.0)
    np.testing.assert_allclose(legacy[0], new[0], rtol=1e-5)
    np.testing.assert_allclose(legacy[1], plain[1], rtol=1e-6)
    assert np.abs(legacy[0]).sum() < np.abs(plain[0]).sum()
    assert type(build_optimizer(OptimizerConfig(name=name))).__name__ == {"adam": "Adam", "adagrad": "Adagrad",
                                                                          "sgd": "SGD"}[name]


@pytest.mark.parametrize("strategy,fused", [("none", "true"), ("mirrored", "false")])
def test_weight_decay_trains_and_is_recorded(tmp_path, strategy, fused):
    """A run with weight decay trains end to end (the decayed optimizer inside model.fit, also through a
    tf.distribute strategy's cross-replica update) and MLflow has the value; a negative one stops
    before training."""
    _, result = train(tmp_path, ["optimizer.weight_decay=0.1", f"optimizer.fused={fused}", f"strategy={strategy}",
                                 "tracking.log_model=false"])
    assert math.isfinite(result.metrics["test_ndcg_10"])
    assert mlflow_run(tmp_path, result.run_id).data.params["optimizer.weight_decay"] == "0.1"
    with pytest.raises(ConfigError, match=r"optimizer\.weight_decay: must be >= 0 \(got -0\.1\)"):
        compose_run(tmp_path / "bad", tiny(["optimizer.weight_decay=-0.1"]))


def test_existing_elwc_shards_train_with_their_feature_spec(tmp_path):
    """dataset=elwc: shards written elsewhere plus the feature_spec.json describing them."""
    from ranking_exp.data.sources import prepare

    run, _ = compose_run(tmp_path, TINY)
    data = prepare(run.dataset)  # synthetic shards, standing in for a user's own ELWC files
    _, result = train(tmp_path / "elwc", [
        "dataset=elwc", f"dataset.train={data.root}/train-*.tfrecord", f"dataset.vali={data.root}/vali-*.tfrecord",
        f"dataset.test={data.root}/test-*.tfrecord", f"dataset.feature_spec={data.root}/feature_spec.json",
        "tracking.log_model=false"])
    assert math.isfinite(result.metrics["test_ndcg_10"])


def test_decay_over_the_run_counts_lists_the_data_set_does_not_count(tmp_path):
    """decay_steps=auto on ELWC shards without list counts: the lists are counted, not refused."""
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare
    from ranking_exp.model.builder import build_model_builder
    from ranking_exp.train.pipeline import RankingPipeline

    run, _ = compose_run(tmp_path, TINY)
    data = prepare(run.dataset)
    run, _ = compose_run(tmp_path / "elwc", [
        *(o for o in TINY if not o.startswith("dataset.")), "dataset=elwc", f"dataset.train={data.root}/train-*.tfrecord", f"dataset.vali={data.root}/vali-*.tfrecord",
        f"dataset.feature_spec={data.root}/feature_spec.json", "optimizer.schedule.kind=cosine",
        "optimizer.schedule.decay_steps=auto"])
    elwc = prepare(run.dataset)
    assert elwc.split("train").num_lists is None
    datasets = RankingDatasetBuilder(elwc, run.train, run.seed)
    model_builder = build_model_builder(run, elwc.spec, lambda: datasets.build_split_dataset("train"))
    pipeline = RankingPipeline(model_builder, datasets, run)
    assert pipeline._optimizer.learning_rate.decay_steps == run.train.epochs * math.ceil(120 / run.train.batch_size)


def test_callbacks_follow_the_config(tmp_path):
    from ranking_exp.train.callbacks import build_callbacks

    run, _ = compose_run(tmp_path, tiny(["callbacks.early_stopping.enabled=true", "callbacks.reduce_lr.enabled=true",
                                         "callbacks.tensorboard.enabled=false", "metrics.monitor=map"]))
    cbs = {type(c).__name__: c for c in build_callbacks(run, str(tmp_path))}
    assert "TensorBoard" not in cbs
    assert cbs["EarlyStopping"].monitor == "val_map" and cbs["ReduceLROnPlateau"].monitor == "val_map"
    assert cbs["EarlyStopping"].patience == 5
