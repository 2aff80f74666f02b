"""Training-speed defaults that must not change what is learnt: several steps per execution,
the per-epoch NaN check, and the stacked in-memory training data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from ranking_exp.errors import ConfigError, TrainingDiverged
from ranking_exp.experiment import run_training
from tests.helpers import QUICK, compose_run, tiny

pytestmark = pytest.mark.usefixtures("fresh_keras")


@pytest.mark.parametrize("value", ["0", "-2", "fast", "2.5", "true"])
def test_bad_steps_per_execution_is_one_line_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"^train\.steps_per_execution: must be auto or a whole number > 0"):
        compose_run(tmp_path, tiny([f"train.steps_per_execution={value}"]))


def _pipeline(tmp_path, overrides, extra_callbacks=()):
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare
    from ranking_exp.model.builder import build_model_builder
    from ranking_exp.train.pipeline import RankingPipeline

    run, _ = compose_run(tmp_path, tiny(overrides))
    data = prepare(run.dataset)
    datasets = RankingDatasetBuilder(data, run.train, run.seed)
    builder = build_model_builder(run, data.spec, lambda: datasets.build_split_dataset("train"))
    return RankingPipeline(builder, datasets, run, extra_callbacks=list(extra_callbacks)), data


def test_auto_runs_whole_epochs_per_execution_in_long_runs_only(tmp_path):
    from ranking_exp.train.pipeline import AUTO_MIN_STEPS

    # Long enough to pay for the loop's graph: a whole epoch per call into TensorFlow.
    long_run = ["train.batch_size=16", f"train.epochs={AUTO_MIN_STEPS}"]
    pipeline, data = _pipeline(tmp_path, long_run)
    batches = math.ceil(data.split("train").num_lists / 16)
    assert pipeline.steps_per_execution(pipeline.build_callbacks()) == batches > 1
    # The datasets say how many batches they hold (Keras needs it to run several steps per call).
    builder = pipeline._dataset_builder
    assert int(builder.build_train_dataset().cardinality()) == batches
    assert int(builder.build_valid_dataset().cardinality()) == math.ceil(data.split("vali").num_lists / 64)
    assert len(list(builder.build_train_dataset())) == batches

    # One step per call: short runs, a callback that needs every batch, a progress bar.
    per_batch = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None)
    for i, (overrides, callbacks) in enumerate([(["train.batch_size=16"], []), (long_run, [per_batch]),
                                                ([*long_run, "train.verbose=1"], [])]):
        pipeline, _ = _pipeline(tmp_path / str(i), overrides, callbacks)
        assert pipeline.steps_per_execution(pipeline.build_callbacks()) == 1, overrides
    pipeline, _ = _pipeline(tmp_path / "n", ["train.steps_per_execution=3"])
    assert pipeline.steps_per_execution(pipeline.build_callbacks()) == 3


def test_several_steps_per_call_loop_in_training_only(tmp_path):
    """Training runs 3 batches per call into TensorFlow; validation and prediction one batch per
    call (their in-graph loop would only cost build time), and every validation batch is seen."""

    class Calls(tf.keras.callbacks.Callback):  # Keras calls batch hooks once per execution
        def __init__(self):
            super().__init__()
            self.train = self.test = self.predict = 0

        def on_train_batch_end(self, batch, logs=None):
            self.train += 1

        def on_test_batch_end(self, batch, logs=None):
            self.test += 1

        def on_predict_batch_end(self, batch, logs=None):
            self.predict += 1

    calls = Calls()
    pipeline, data = _pipeline(tmp_path, ["train.steps_per_execution=3", "train.batch_size=16", "train.epochs=2",
                                          "train.eval_batch_size=8", *QUICK], [calls])
    pipeline.train_and_validate()
    train_batches = math.ceil(data.split("train").num_lists / 16)
    vali_batches = math.ceil(data.split("vali").num_lists / 8)
    assert train_batches > 3 and vali_batches > 1
    assert calls.train == 2 * math.ceil(train_batches / 3)
    assert calls.test == 2 * vali_batches
    assert int(pipeline.model._steps_per_execution.numpy()) == 3  # restored after validation
    valid = pipeline._dataset_builder.build_valid_dataset()
    pipeline.model.predict(valid.map(lambda x, y: x), callbacks=[calls], verbose=0)
    assert calls.predict == vali_batches


def test_steps_per_execution_changes_no_weight(tmp_path):
    """One step per call or several (8 batches an epoch: 3 + 3 + 2): the same updates, the same model."""
    results = {}
    for value in ("1", "3"):
        run, cfg = compose_run(tmp_path / value, tiny([f"train.steps_per_execution={value}", "train.epochs=2",
                                                       "train.batch_size=16", *QUICK]))
        result = run_training(run, cfg, launch_dir=str(tmp_path / value), run_name=value)
        results[value] = {k: v for k, v in result.metrics.items() if k != "train_seconds"}
    assert len(results["1"]) > 5
    assert results["1"] == pytest.approx(results["3"], rel=1e-5, abs=1e-6)


def test_a_diverging_run_stops_at_the_end_of_its_first_bad_epoch_before_validation(tmp_path):
    # Keras's unfused batch norm overflows to NaN at this rate (the fused kernel stays finite).
    run, cfg = compose_run(tmp_path, tiny(["optimizer=sgd", "optimizer.learning_rate=1e12", "train.epochs=3",
                                           "scorer.fast_layers=false", *QUICK]))
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss is (nan|inf|-inf) at epoch 1 \(try a lower "
                                               r"optimizer\.learning_rate than 1000000000000\.0\)"):
        run_training(run, cfg, launch_dir=str(tmp_path), run_name="nan")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (failed,) = client.search_runs([client.get_experiment_by_name(run.tracking.experiment).experiment_id])
    assert failed.info.status == "FAILED"
    assert client.get_metric_history(failed.info.run_id, "val_ndcg_10") == []  # the NaN epoch was not recorded


def test_the_nan_check_reads_no_batch_and_stops_before_validation():
    from ranking_exp.train.callbacks import StopOnNaN

    class Seen(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_test_begin(self, logs=None):
            self.events.append("validation")

        def on_epoch_end(self, epoch, logs=None):
            self.events.append(f"end of epoch {epoch + 1}")

    x = np.ones((8, 2), np.float32)
    y = np.ones((8, 1), np.float32)
    y[5] = np.nan  # the third batch of two
    stop, seen = StopOnNaN(0.1, per_batch=False), Seen()
    assert not stop._implements_train_batch_hooks()
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x[:4], y[:4], batch_size=2, epochs=1, validation_data=(x, x[:, :1]), callbacks=[stop, seen], verbose=0)
    assert seen.events == ["validation", "end of epoch 1"]  # finite: nothing stops
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss is nan at epoch 1 "):
        model.fit(x, y, batch_size=2, epochs=2, validation_data=(x, x[:, :1]), callbacks=[stop, seen], verbose=0)
    assert seen.events == ["validation", "end of epoch 1"]  # the NaN epoch reached neither


def _lists_by_content(dataset, names, mask_name):
    """Every real list of one pass, as sorted rows of (label, feature values...)."""
    out = []
    for features, labels in dataset:
        mask = features[mask_name].numpy()
        labels = labels.numpy()
        for i in range(len(labels)):
            cols = [labels[i][mask[i]]]
            for n in names:
                v = features[n].numpy()[i]
                cols.append(np.broadcast_to(v.reshape(1, -1)[:, 0], mask[i].sum()) if v.ndim == 1
                            else v[mask[i]].reshape(mask[i].sum(), -1)[:, 0])
            out.append(tuple(sorted(map(tuple, np.round(np.stack(cols, axis=1), 5).tolist()))))
    return sorted(out)


def test_stacked_cached_lists_carry_every_feature_under_its_own_name(tmp_path):
    """The in-memory path stacks alike features into one tensor and splits them per batch: each
    list comes out with the values TF Ranking's own parser gives every named feature."""
    from ranking_exp.data.builder import RankingDatasetBuilder
    from ranking_exp.data.sources import prepare

    run, _ = compose_run(tmp_path, tiny(["train.cache=memory"]))
    data = prepare(run.dataset)
    cached = RankingDatasetBuilder(data, run.train, run.seed).build_train_dataset()
    run_none, _ = compose_run(tmp_path / "none", tiny(["train.cache=none"]))
    parsed = RankingDatasetBuilder(data, run_none.train, run.seed).build_train_dataset()
    names = data.spec.context_names + data.spec.example_names
    assert data.spec.context_names and len(data.spec.example_names) > 1
    assert set(cached.element_spec[0]) == set(parsed.element_spec[0])
    mask = data.spec.mask_name
    assert _lists_by_content(cached, names, mask) == _lists_by_content(parsed, names, mask)


def test_one_repeating_iterator_gives_each_epoch_the_batches_a_fresh_one_would(tmp_path):
    """The pipeline trains over ``build_train_dataset().repeat()`` (one iterator for the run) with
    steps_per_epoch = its batches: epoch k must get the same (reshuffled) batches as the k-th
    fresh pass Keras would otherwise start, the partial last batch included."""
    pipeline, _ = _pipeline(tmp_path, ["dataset.num_train=70", "train.batch_size=16"])
    builder = pipeline._dataset_builder
    n = builder.num_batches("train")
    assert n == 5
    dataset = builder.build_train_dataset()
    fresh = [b[1].numpy() for _ in range(3) for b in dataset]
    repeated = [b[1].numpy() for b in builder.build_train_dataset().repeat().take(3 * n)]
    assert len(fresh) == len(repeated) == 15
    assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(fresh, repeated))
    assert not np.array_equal(fresh[0], fresh[n])  # reshuffled between epochs
