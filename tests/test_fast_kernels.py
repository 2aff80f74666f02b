"""The cheaper kernels behind the defaults ``scorer.fast_layers`` and ``optimizer.fused``: each
must compute what the Keras layer or optimizer it replaces computes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_ranking as tfr
from mlflow.tracking import MlflowClient

from ranking_exp.config import OptimizerConfig
from ranking_exp.experiment import run_training
from ranking_exp.model.fast_layers import ByteDropout, FusedBatchNormalization, swap_fast_layers
from ranking_exp.train.optimizer import build_optimizer
from tests.helpers import compose_run, tiny

pytestmark = pytest.mark.usefixtures("fresh_keras")


def test_fused_batch_norm_normalizes_and_tracks_statistics_as_keras_does():
    x = tf.random.stateless_normal([300, 24], seed=[1, 2]) * 3.0 + 1.5
    keras_bn = tf.keras.layers.BatchNormalization(momentum=0.9)
    fused_bn = FusedBatchNormalization(momentum=0.9)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_keras = keras_bn(x, training=True)
        y_fused = fused_bn(x, training=True)
        loss_keras = tf.reduce_sum(y_keras ** 3)
        loss_fused = tf.reduce_sum(y_fused ** 3)
    np.testing.assert_allclose(y_fused, y_keras, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss_fused, x), tape.gradient(loss_keras, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_bn.moving_mean, keras_bn.moving_mean, atol=1e-6)
    # Keras's fused path updates with the unbiased batch variance (n / (n - 1)), its plain path biased.
    np.testing.assert_allclose((fused_bn.moving_variance - 0.9) / (keras_bn.moving_variance - 0.9), 300 / 299,
                               rtol=1e-4)
    fused_bn.moving_variance.assign(keras_bn.moving_variance)
    np.testing.assert_allclose(fused_bn(x, training=False), keras_bn(x, training=False), atol=1e-5)


def test_byte_dropout_keeps_the_expectation_and_is_identity_in_inference():
    layer = ByteDropout(0.2)
    assert layer.threshold == 51  # 0.2 rounded to 1/256
    ones = tf.ones([1000, 1000])
    dropped = layer(ones, training=True).numpy()
    assert abs((dropped == 0).mean() - 51 / 256) < 0.003
    assert abs(dropped.mean() - 1.0) < 0.005  # kept units scaled by 256 / (256 - 51)
    assert set(np.unique(dropped)) == {0.0, np.float32(256 / 205)}
    assert not np.array_equal(dropped, layer(ones, training=True).numpy())  # a new mask per call
    x = tf.random.normal([50, 7])
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(ByteDropout(0.0)(x, training=True), x)

    def masks(seed):
        tf.random.set_seed(seed)
        return ByteDropout(0.5)(ones, training=True).numpy()

    np.testing.assert_array_equal(masks(7), masks(7))  # seeded runs repeat


def test_swapped_tower_computes_tf_rankings_tower_without_redundant_biases():
    tf.random.set_seed(0)
    stock = tfr.keras.layers.create_tower([16, 8], 1, activation=tf.nn.relu, input_batch_norm=True, dropout=0.3)
    fast = swap_fast_layers(tfr.keras.layers.create_tower([16, 8], 1, activation=tf.nn.relu, input_batch_norm=True,
                                                          dropout=0.3))
    assert [type(layer).__name__ for layer in fast.layers] == [
        "FusedBatchNormalization", "Dense", "FusedBatchNormalization", "Activation", "ByteDropout",
        "Dense", "FusedBatchNormalization", "Activation", "ByteDropout", "Dense"]
    denses = [layer for layer in fast.layers if isinstance(layer, tf.keras.layers.Dense)]
    assert [d.use_bias for d in denses] == [False, False, True]  # only the output layer keeps one
    x = tf.random.stateless_normal([40, 5], seed=[3, 4])
    stock(x), fast(x)
    # Same weights (a bias of a layer before batch norm is cancelled by its mean: give it a value).
    for s, f in zip(stock.layers, fast.layers):
        if isinstance(s, tf.keras.layers.Dense):
            f.kernel.assign(s.kernel)
            if f.use_bias:
                f.bias.assign(s.bias)
            else:
                s.bias.assign(tf.random.normal(s.bias.shape))
    # With dropout off, the training-mode functions (batch statistics) agree.
    for s, f in zip(stock.layers, fast.layers):
        if isinstance(s, tf.keras.layers.Dropout):
            s.rate, f.threshold = 0.0, 0
    np.testing.assert_allclose(fast(x, training=True), stock(x, training=True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd"])
def test_fused_optimizers_make_the_same_updates(name):
    finals = []
    for fused in (True, False):
        v = tf.Variable(np.linspace(-1, 1, 10).astype("float32"))
        opt = build_optimizer(OptimizerConfig(name=name, learning_rate=0.01, momentum=0.9, fused=fused))
        for _ in range(20):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.sin(3 * v) * v)
            opt.apply_gradients([(tape.gradient(loss, v), v)])
        finals.append(v.numpy())
    np.testing.assert_allclose(finals[0], finals[1], atol=1e-5)
    assert not np.allclose(finals[0], np.linspace(-1, 1, 10))  # it did move


def test_runs_with_either_kernels_train_alike(tmp_path):
    """The same seed with the Keras kernels and with the fast ones: both learn (dropout's draws
    differ, so the numbers do too, but not by much on a tiny run)."""
    results = {}
    for fast in (False, True):
        run, cfg = compose_run(tmp_path / str(fast), tiny([
            f"scorer.fast_layers={str(fast).lower()}", f"optimizer.fused={str(fast).lower()}",
            "tracking.log_model=false", "train.resume=false", "callbacks.tensorboard.enabled=false"]))
        result = run_training(run, cfg, launch_dir=str(tmp_path / str(fast)), run_name=str(fast))
        losses = [m.value for m in sorted(MlflowClient(run.tracking.uri).get_metric_history(result.run_id, "loss"),
                                          key=lambda m: m.step)]
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
        results[fast] = result.metrics["test_ndcg_10"]
    assert abs(results[True] - results[False]) < 0.1


def test_grouped_preprocessing_equals_one_function_per_feature():
    from ranking_exp.config import FeatureOverride, FeatureTransform, PreprocessConfig
    from ranking_exp.data.spec import Feature, FeatureSpec
    from ranking_exp.model.preprocess import (GroupedPreprocessor, build_preprocessor, feature_fn,
                                              fit_statistics, transforms_by_feature)

    spec = FeatureSpec(context=(Feature("q1"), Feature("q2"), Feature("qv", shape=(3,))),
                       example=tuple(Feature(f"f{i}") for i in range(6)) + (Feature("count", dtype="int64"),))
    cfg = PreprocessConfig(default=FeatureTransform(log1p=True), features=[
        FeatureOverride(name="f2", log1p=True, standardize=True, clip_min=-1.0, clip_max=1.5),
        FeatureOverride(name="f3", log1p=True, standardize=True, clip_min=-1.0, clip_max=1.5),
        FeatureOverride(name="f4", log1p=False, standardize=True)])
    rng = np.random.default_rng(0)
    mask = tf.constant(rng.random((4, 9)) < 0.8)
    context = {"q1": rng.normal(size=(4, 1)) * 9, "q2": rng.normal(size=(4, 1)) * 9, "qv": rng.normal(size=(4, 3))}
    example = {f"f{i}": rng.lognormal(size=(4, 9, 1)) * (i + 1) * np.sign(rng.normal(size=(4, 9, 1)))
               for i in range(6)}
    example["count"] = rng.integers(0, 50, size=(4, 9, 1))
    context = {k: tf.constant(v, tf.float32) for k, v in context.items()}
    example = {k: tf.constant(v, tf.int64 if k == "count" else tf.float32) for k, v in example.items()}
    batches = [({**context, **example, spec.mask_name: mask}, None)]

    grouped = build_preprocessor(cfg, spec, lambda: batches)
    assert isinstance(grouped, GroupedPreprocessor)
    assert sorted(sorted(names) for names, _ in grouped._groups) == [
        ["f0", "f1", "f5"], ["f2", "f3"], ["q1", "q2"]]  # f4, qv (shape 3) and count (int) alone
    transforms = transforms_by_feature(cfg, spec)
    stats = fit_statistics(batches, spec, transforms)
    reference = tfr.keras.model.PreprocessorWithSpec({n: feature_fn(t, stats.get(n)) for n, t in transforms.items()})
    got_context, got_example = grouped(context, example, mask)
    want_context, want_example = reference(context, example, mask)
    for want, got in ((want_context, got_context), (want_example, got_example)):
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    assert float(tf.reduce_max(got_example["f2"])) <= 1.5  # the clip applied in the group
