"""The quantile transform (preprocess.*.quantile): fitted on training documents, inside the model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import FeatureOverride, FeatureTransform, PreprocessConfig
from ranking_exp.data.spec import Feature, FeatureSpec
from ranking_exp.model import preprocess
from ranking_exp.model.preprocess import (build_preprocessor, feature_fn, fit_statistics, quantile_transform,
                                          transforms_by_feature)
from tests.helpers import compose_run, tiny

SPEC = FeatureSpec(context=(), example=(Feature("x"),))


def batches_of(values: np.ndarray, *, list_size: int = 50, padding: float | None = None):
    """``values`` as TF Ranking batches of one feature ``x``: lists of ``list_size`` documents, and
    with ``padding`` one padded slot per list holding that value (the mask marks it)."""
    out = []
    for start in range(0, len(values), list_size * 4):
        chunk = values[start:start + list_size * 4]
        n = len(chunk) // list_size
        x = chunk[:n * list_size].reshape(n, list_size)
        mask = np.ones_like(x, dtype=bool)
        if padding is not None:
            x = np.concatenate([x, np.full((n, 1), padding)], axis=1)
            mask = np.concatenate([mask, np.zeros((n, 1), dtype=bool)], axis=1)
        out.append(({"x": tf.constant(x[..., None], tf.float32), SPEC.mask_name: tf.constant(mask)}, None))
    return out


def fitted(values: np.ndarray, output: str, **kwargs):
    t = FeatureTransform(log1p=False, quantile=output)
    stats = fit_statistics(batches_of(values, **kwargs), SPEC, {"x": t})
    return lambda x: feature_fn(t, stats["x"])(tf.constant(np.asarray(x, np.float32)[..., None])).numpy()[..., 0]


@pytest.mark.parametrize("output", ["uniform", "normal"])
def test_quantile_transform_matches_scikit_learn_inside_the_training_range(output):
    from sklearn.preprocessing import QuantileTransformer

    rng = np.random.default_rng(0)
    # heavy-tailed values, a third of them tied on a few round numbers inside the range
    values = np.where(rng.random(20_000) < 0.33, rng.choice([0.5, 1.0, 2.0], 20_000), rng.lognormal(0, 1.5, 20_000))
    values = values.astype(np.float32)
    ours = fitted(values, output)
    sk = QuantileTransformer(n_quantiles=1000, output_distribution=output, subsample=None).fit(values[:, None])
    probe = np.concatenate([rng.lognormal(0, 1.5, 2000), [0.5, 1.0, 2.0]]).astype(np.float32)
    probe = probe[(probe > values.min()) & (probe < values.max())]
    want = sk.transform(probe[:, None])[:, 0]
    np.testing.assert_allclose(ours(probe), want, atol=2e-5 if output == "uniform" else 2e-4)
    tie = ours(np.array([1.0]))[0]  # mid-block: the mean of the fractions below and at-or-below 1.0
    below, at_or_below = np.mean(values < 1.0), np.mean(values <= 1.0)
    expected = (below + at_or_below) / 2
    assert (tie if output == "uniform" else 0.5 * (1 + math.erf(tie / math.sqrt(2)))) == pytest.approx(expected, abs=2e-3)


def test_quantile_transform_ends_ties_at_the_minimum_padding_and_constants():
    rng = np.random.default_rng(1)
    values = np.where(rng.random(10_000) < 0.4, 0.0, rng.random(10_000)).astype(np.float32)
    # padded slots hold 1e6: counted, they would move the top quantiles; they must not be
    uniform = fitted(values, "uniform", padding=1e6)
    got = uniform(np.array([-5.0, 0.0, 0.999, 1e6]))
    assert got[0] == 0.0 and got[3] == 1.0
    assert got[1] == pytest.approx(0.2, abs=0.01)  # 40% of documents share 0: the middle of their block
    assert got[2] == pytest.approx(0.999 * 0.6 + 0.4, abs=0.01)
    normal = fitted(values, "normal")(np.array([-5.0, 1e6, 0.5]))
    assert normal[0] == pytest.approx(-5.199, abs=1e-3) and normal[1] == pytest.approx(5.199, abs=1e-3)
    assert np.all(np.isfinite(normal))
    constant = fitted(np.full(500, 3.0, np.float32), "normal")(np.array([2.0, 3.0, 4.0]))
    assert constant[1] == 0.0 and constant[0] < -5 and constant[2] > 5


def test_quantiles_come_from_a_uniform_sample_of_every_batch(monkeypatch):
    """Past QUANTILE_SAMPLE documents the fit keeps a uniform sample, not the first or last ones:
    batches sorted by value (as a file sorted by query can be) still give the whole distribution."""
    monkeypatch.setattr(preprocess, "QUANTILE_SAMPLE", 500)
    values = np.sort(np.random.default_rng(2).random(40_000)).astype(np.float32)
    u = fitted(values, "uniform")(np.array([0.1, 0.5, 0.9]))
    np.testing.assert_allclose(u, [0.1, 0.5, 0.9], atol=0.06)


def test_grouped_quantile_features_equal_one_function_per_feature():
    spec = FeatureSpec(context=(Feature("q1"), Feature("q2")),
                       example=tuple(Feature(f"f{i}") for i in range(5)) + (Feature("v", shape=(3,)),))
    cfg = PreprocessConfig(default=FeatureTransform(log1p=True, quantile="normal", quantiles=64), features=[
        FeatureOverride(name="f3", log1p=False, quantile="uniform", clip_max=0.9),
        FeatureOverride(name="f4", log1p=False, quantile="uniform", clip_max=0.9),
        FeatureOverride(name="q2", log1p=True, standardize=True)])
    rng = np.random.default_rng(3)
    mask = tf.constant(rng.random((6, 11)) < 0.8)
    context = {"q1": tf.constant(rng.lognormal(size=(6, 1)), tf.float32),
               "q2": tf.constant(rng.normal(size=(6, 1)), tf.float32)}
    example = {f"f{i}": tf.constant(rng.lognormal(size=(6, 11, 1)) * (i + 1), tf.float32) for i in range(5)}
    example["v"] = tf.constant(rng.normal(size=(6, 11, 3)), tf.float32)
    batches = [({**context, **example, spec.mask_name: mask}, None)]

    grouped = build_preprocessor(cfg, spec, lambda: batches)
    assert sorted(sorted(names) for names, _ in grouped._groups) == [["f0", "f1", "f2"], ["f3", "f4"]]
    transforms = transforms_by_feature(cfg, spec)
    stats = fit_statistics(batches, spec, transforms)
    assert stats["v"].quantiles.shape == (64, 3) and stats["q2"].mean.shape == (1,)
    reference = tfr.keras.model.PreprocessorWithSpec({n: feature_fn(t, stats.get(n)) for n, t in transforms.items()})
    for want, got in zip(reference(context, example, mask), grouped(context, example, mask)):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    assert float(tf.reduce_max(grouped(context, example, mask)[1]["f3"])) <= 0.9


def test_quantile_transform_keeps_the_input_shape():
    points = np.stack([np.linspace(0, 1, 5), np.linspace(-1, 1, 5)], axis=1).astype(np.float32)
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 7, 2)), tf.float32)
    y = quantile_transform(x, points, "uniform")
    assert y.shape == x.shape
    np.testing.assert_allclose(y[..., 0], np.clip(x[..., 0], 0, 1), atol=1e-6)
    np.testing.assert_allclose(y[..., 1], np.clip((x[..., 1] + 1) / 2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("quantile", [None, "normal"])
def test_the_exported_model_applies_the_fitted_quantiles_when_serving(tmp_path, quantile):
    """Served features go through the training quantiles: two documents beyond every training
    value score the same with the transform (both at its top) and differ without it (log1p only)."""
    from ranking_exp.experiment import run_training

    tf.keras.backend.clear_session()
    overrides = ["tracking.log_model=false"] + ([f"preprocess.default.quantile={quantile}"] if quantile else [])
    run, cfg = compose_run(tmp_path, tiny(overrides))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="test")
    spec = FeatureSpec.load(result.exports["last"])
    fn = tf.saved_model.load(result.exports["last"]).signatures["serving_features"]
    inputs = {f.name: tf.zeros([1, 1], tf.float32) for f in spec.context}
    for f in spec.example:
        inputs[f.name] = tf.constant([[[1e12], [1e15], [0.0]]], tf.float32)
    inputs[spec.mask_name] = tf.ones([1, 3], tf.bool)
    scores = fn(**inputs)["outputs"].numpy()[0]
    assert np.all(np.isfinite(scores))
    assert (scores[0] == scores[1]) == (quantile is not None)
