"""``train.document_dropout``: training lists lose documents at random, validation lists never."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ranking_exp.errors import ConfigError
from ranking_exp.experiment import run_training
from tests.helpers import QUICK, compose_run, tiny

pytestmark = pytest.mark.usefixtures("fresh_keras")


@pytest.mark.parametrize("overrides, message", [
    (["train.document_dropout=-0.1"], r"^train\.document_dropout: must be in \[0, 1\) \(got -0\.1\)$"),
    (["train.document_dropout=1.0"], r"^train\.document_dropout: must be in \[0, 1\) \(got 1\.0\)$"),
    (["train.document_dropout=nan"], r"^train\.document_dropout: must be in \[0, 1\) \(got nan\)$"),
    (["scorer=lightgbm", "train.document_dropout=0.2"], r"^train\.document_dropout: does not apply to scorer=lightgbm"),
    (["strategy=multi_worker_mirrored", "strategy.shard_policy=file", "train.document_dropout=0.2"],
     r"^strategy\.shard_policy: file sharding cannot split train\.document_dropout's random draws"),
])
def test_bad_document_dropout_is_one_line_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_run(tmp_path, tiny(overrides))


def _builder(tmp_path, overrides):
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare

    run, _ = compose_run(tmp_path, tiny(["dataset.num_train=120", "train.batch_size=16", *overrides]))
    data = prepare(run.dataset)
    return RankingDatasetBuilder(data, run.train, run.seed), data.spec


def _passes(builder, n):
    """``n`` epochs of the training dataset as numpy (features, labels) batches."""
    dataset = builder.build_train_dataset()
    return [[({k: v.numpy() for k, v in f.items()}, y.numpy()) for f, y in dataset] for _ in range(n)]


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_dropped_documents_become_padding_and_kept_ones_are_untouched(tmp_path, cache):
    same = [f"train.cache={cache}", "train.shuffle_buffer=1"]  # one order every pass: only the draws differ
    whole_builder, spec = _builder(tmp_path / "whole", same)
    dropped_builder, _ = _builder(tmp_path / "dropped", [*same, "train.document_dropout=0.3"])
    whole, dropped = _passes(whole_builder, 2), _passes(dropped_builder, 2)
    mask_name, names = spec.mask_name, spec.example_names
    real = kept = 0
    for epoch_whole, epoch_dropped in zip(whole, dropped):
        assert len(epoch_whole) == len(epoch_dropped) == whole_builder.num_batches("train")
        for (fw, yw), (fd, yd) in zip(epoch_whole, epoch_dropped):  # the same lists in the same order
            mask_w, mask_d = fw[mask_name], fd[mask_name]
            assert not np.any(mask_d & ~mask_w)  # nothing appears
            gone = mask_w & ~mask_d
            np.testing.assert_array_equal(yd[mask_d], yw[mask_d])
            assert np.all(yd[gone] == -1) and np.all(yd[~mask_w] == yw[~mask_w])
            for n in names:
                np.testing.assert_array_equal(fd[n][mask_d], fw[n][mask_d])
                assert np.all(fd[n][gone] == 0)
            for n in spec.context_names:
                np.testing.assert_array_equal(fd[n], fw[n])
            assert np.all(mask_d.any(axis=1) == mask_w.any(axis=1))  # no list loses every document
            real += mask_w.sum()
            kept += mask_d.sum()
    assert 0.62 < kept / real < 0.78  # about 1 - 0.3
    first, second = (np.concatenate([f[mask_name].ravel() for f, _ in e]) for e in dropped)
    assert not np.array_equal(first, second)  # new draws every epoch
    again, _ = _builder(tmp_path / "again", [*same, "train.document_dropout=0.3"])
    replay = _passes(again, 2)
    assert all(np.array_equal(a[0][mask_name], b[0][mask_name]) for e, r in zip(dropped, replay) for a, b in zip(e, r))


def test_the_training_loops_one_repeating_iterator_draws_anew_every_epoch(tmp_path):
    """Training runs one iterator over ``build_train_dataset().repeat()``: each pass must drop other
    documents, and the same seed must replay the same passes. (No shuffling, so that only the
    draws can tell one pass from the next.)"""
    def masks(path, rate):
        builder, spec = _builder(path, [f"train.document_dropout={rate}", "train.shuffle_buffer=1"])
        n = builder.num_batches("train")
        flat = [f[spec.mask_name].numpy() for f, _ in builder.build_train_dataset().repeat().take(3 * n)]
        return [np.concatenate([m.ravel() for m in flat[i * n:(i + 1) * n]]) for i in range(3)]

    whole = masks(tmp_path / "whole", 0.0)
    assert np.array_equal(whole[0], whole[1])  # the same lists in the same order every pass
    first, again = masks(tmp_path / "a", 0.3), masks(tmp_path / "b", 0.3)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


def test_validation_lists_stay_whole(tmp_path):
    whole_builder, spec = _builder(tmp_path / "whole", [])
    dropped_builder, _ = _builder(tmp_path / "dropped", ["train.document_dropout=0.5"])
    for (fw, yw), (fd, yd) in zip(whole_builder.build_valid_dataset(), dropped_builder.build_valid_dataset()):
        np.testing.assert_array_equal(fd[spec.mask_name].numpy(), fw[spec.mask_name].numpy())
        np.testing.assert_array_equal(yd.numpy(), yw.numpy())


def test_multi_worker_auto_sharding_falls_back_to_data(tmp_path):
    """FILE sharding finds no files behind the draws' second source, so auto shards by data."""
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare

    policy = tf.data.experimental.AutoShardPolicy
    run, _ = compose_run(tmp_path, tiny(["dataset.num_shards=4"]))
    data = prepare(run.dataset)
    whole = RankingDatasetBuilder(data, run.train, run.seed, num_workers=2).build_train_dataset()
    run_d, _ = compose_run(tmp_path / "d", tiny(["dataset.num_shards=4", "train.document_dropout=0.2"]))
    dropped = RankingDatasetBuilder(data, run_d.train, run.seed, num_workers=2).build_train_dataset()
    assert whole.options().experimental_distribute.auto_shard_policy == policy.FILE
    assert dropped.options().experimental_distribute.auto_shard_policy == policy.DATA


@pytest.mark.parametrize("scorer", ["dnn", "dasalc"])
def test_a_run_with_document_dropout_trains_and_differs_from_one_without(tmp_path, scorer):
    base = [*QUICK, f"scorer={scorer}", "train.epochs=2", "dataset.num_train=64"]
    if scorer == "dasalc":
        base += ["scorer.hidden_layer_dims=[16,8]", "scorer.num_attention_layers=1", "scorer.head_size=8"]
    results = {}
    for rate in (0.0, 0.4):
        run, cfg = compose_run(tmp_path / str(rate), tiny([*base, f"train.document_dropout={rate}"]))
        results[rate] = run_training(run, cfg, launch_dir=str(tmp_path), run_name=f"dropout {rate}")
    for r in results.values():
        assert all(np.isfinite(v) for v in r.metrics.values())
    assert results[0.0].metrics["test_ndcg_10"] != results[0.4].metrics["test_ndcg_10"]
