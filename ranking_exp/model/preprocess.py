"""Per-feature preprocessing inside the model, so serving applies exactly what training did.

Each feature gets signed log1p, standardization and clipping as configured (in that order).
Standardization statistics come from one pass over the training data and are stored in the
model as constants.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import FeatureTransform, PreprocessConfig
from ranking_exp.data.spec import FeatureSpec
from ranking_exp.errors import ConfigError
from ranking_exp.plugins import load_callable


def signed_log1p(x: tf.Tensor) -> tf.Tensor:
    """TF Ranking guide's transform: log1p of |x| with x's sign; tames heavy-tailed features."""
    return tf.math.log1p(tf.abs(x)) * tf.sign(x)


def transforms_by_feature(cfg: PreprocessConfig, spec: FeatureSpec) -> dict[str, FeatureTransform]:
    """The transform of every context and example feature; unknown names in the config fail."""
    known = spec.context_names + spec.example_names
    overrides = {t.name: t for t in cfg.features}
    for i, t in enumerate(cfg.features):
        if t.name not in known:
            raise ConfigError(f"preprocess.features[{i}].name: no feature {t.name!r} in the data "
                              f"(features: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''})")
    return {name: overrides.get(name, cfg.default) for name in known}


def fit_standardization(batches: Iterable, spec: FeatureSpec,
                        transforms: dict[str, FeatureTransform]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and std of each standardized feature (after log1p where on), real documents only.

    ``batches`` yields ``(features, labels)`` as TF Ranking's dataset builders produce them.
    """
    names = [n for n, t in transforms.items() if t.standardize]
    if not names:
        return {}
    context = set(spec.context_names)
    sums = {n: 0.0 for n in names}
    sqs = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    for features, _ in batches:
        mask = features[spec.mask_name].numpy()
        for n in names:
            x = tf.cast(features[n], tf.float32)
            if transforms[n].log1p:
                x = signed_log1p(x)
            x = x.numpy().astype(np.float64)
            x = x if n in context else x[mask]
            x = x.reshape(len(x), -1)
            sums[n] = sums[n] + x.sum(axis=0)
            sqs[n] = sqs[n] + (x * x).sum(axis=0)
            counts[n] += len(x)
    out = {}
    for n in names:
        if counts[n] == 0:
            raise ConfigError(f"preprocess.features.{n}: no training data to standardize with")
        mean = sums[n] / counts[n]
        var = np.maximum(sqs[n] / counts[n] - mean * mean, 0.0)
        std = np.where(var > 1e-12, np.sqrt(var), 1.0)
        out[n] = (mean.astype(np.float32), std.astype(np.float32))
    return out


def feature_fn(t: FeatureTransform, stats: tuple[np.ndarray, np.ndarray] | None) -> Callable[[tf.Tensor], tf.Tensor]:
    def apply(x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        if t.log1p:
            x = signed_log1p(x)
        if t.standardize:
            mean, std = stats
            x = (x - tf.constant(mean)) / tf.constant(std)
        if t.clip_min is not None or t.clip_max is not None:
            lo = -np.inf if t.clip_min is None else t.clip_min
            hi = np.inf if t.clip_max is None else t.clip_max
            x = tf.clip_by_value(x, lo, hi)
        return x

    return apply


class GroupedPreprocessor(tfr.keras.model.PreprocessorWithSpec):
    """TF Ranking's ``PreprocessorWithSpec`` that applies one transform to a group of scalar
    features at once: concatenated, transformed, split back. The same values as one function per
    feature, in three ops instead of a few per feature (MQ2008's 46 log1p's were ~7% of a step)."""

    def __init__(self, groups: list[tuple[list[str], Callable[[tf.Tensor], tf.Tensor]]], **kwargs):
        super().__init__(**kwargs)
        self._groups = groups

    def __call__(self, context_inputs, example_inputs, mask):
        context_inputs, example_inputs = dict(context_inputs), dict(example_inputs)
        for names, fn in self._groups:
            inputs = context_inputs if names[0] in context_inputs else example_inputs
            x = tf.concat([tf.cast(inputs[n], tf.float32) for n in names], axis=-1)
            for n, part in zip(names, tf.split(fn(x), len(names), axis=-1)):
                inputs[n] = part
        return super().__call__(context_inputs, example_inputs, mask)


def _groups(transforms: dict[str, FeatureTransform], stats: dict, spec: FeatureSpec):
    """Scalar features with the same transform, context and example apart (2+ per group)."""
    groups: dict[tuple, tuple[FeatureTransform, list[str]]] = {}
    for part in (spec.context, spec.example):
        for f in part:
            if f.shape == (1,) and f.dtype == "float32":
                t = transforms[f.name]
                key = (part is spec.context, t.log1p, t.standardize, t.clip_min, t.clip_max)
                groups.setdefault(key, (t, []))[1].append(f.name)
    out = []
    for t, names in groups.values():
        if len(names) < 2:
            continue
        merged = (np.concatenate([stats[n][0] for n in names]), np.concatenate([stats[n][1] for n in names])) \
            if t.standardize else None
        out.append((names, feature_fn(t, merged)))
    return out


def build_preprocessor(cfg: PreprocessConfig, spec: FeatureSpec,
                       train_batches: Callable[[], Iterable]) -> tfr.keras.model.Preprocessor:
    """TF Ranking's ``PreprocessorWithSpec`` (one function per feature; alike scalar features
    transformed together), or the user's own."""
    if cfg.custom is not None:
        factory = load_callable(cfg.custom, "preprocess.custom")
        pre = factory(feature_spec=spec, **cfg.custom_kwargs)
        if not callable(pre):
            raise ConfigError(f"preprocess.custom: {cfg.custom} returned a non-callable {type(pre).__name__}")
        return pre
    transforms = transforms_by_feature(cfg, spec)
    stats = fit_standardization(train_batches(), spec, transforms) if any(
        t.standardize for t in transforms.values()) else {}
    groups = _groups(transforms, stats, spec)
    grouped = {n for names, _ in groups for n in names}
    return GroupedPreprocessor(groups, preprocess_spec={
        name: feature_fn(t, stats.get(name)) for name, t in transforms.items() if name not in grouped})
