"""TF Ranking's ModelFitPipeline, configured from a RunConfig.

We override only the steps TF Ranking leaves to subclasses (loss, metrics, callbacks) plus
the optimizer and strategy it would otherwise build from strings, and we keep a handle on
the trained model and the exports. Training, validation and export stay TF Ranking's, except
under ParameterServerStrategy, which Keras trains from a dataset function with a fixed number of
steps and evaluates exactly (``_parameter_server_input``).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import struct
import tempfile
import types

import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import LossConfig, RunConfig
from ranking_exp.data.builder import RankingDatasetBuilder
from ranking_exp.errors import ConfigError, DataError
from ranking_exp.metrics import build_metrics
from ranking_exp.model.packing import PackedScorer
from ranking_exp.train.callbacks import BestWeights, EpochsRun, StopOnNaN, Throughput, build_callbacks
from ranking_exp.train.optimizer import build_optimizer, build_slots
from ranking_exp.train.resume import ResumeDir, make_state_callback
from ranking_exp.train.strategy import is_parameter_server, num_workers

log = logging.getLogger(__name__)

# train.steps_per_execution=auto runs whole epochs per execution from this many training steps
# in a run. On 2 cores (MQ2008, DNN 1024-512-256, ~30 ms steps) the training loop's graph costs
# ~0.3 s more to build, once, and saves ~3.5 ms a step (paired epochs: -14%), so it pays from
# ~80 steps. (Validation and prediction keep one batch per call: one_step_per_call.)
AUTO_MIN_STEPS = 100

LAST_EXPORT = "export/latest_model"  # TF Ranking's names for the two exports
BEST_EXPORT = "export/best_model_by_metric"

_LAMBDA_WEIGHTS = {
    "ndcg": tfr.keras.losses.NDCGLambdaWeight,
    "ndcg_v2": tfr.keras.losses.NDCGLambdaWeightV2,
    "dcg": tfr.keras.losses.DCGLambdaWeight,
    "label_diff": tfr.keras.losses.LabelDiffLambdaWeight,
    "precision": tfr.keras.losses.PrecisionLambdaWeight,
    "list_mle": tfr.keras.losses.ListMLELambdaWeight,
    "yeti_dcg": tfr.keras.losses.YetiDCGLambdaWeight,
}


@tf.keras.utils.register_keras_serializable(package="ranking_exp")
def unit_discount(rank):
    """No rank discount: a DCG lambda weight that is the label's gain alone (``loss.label_gain``,
    ``loss.list_weights``)."""
    return tf.ones_like(rank)


def build_loss(cfg: LossConfig) -> tf.keras.losses.Loss:
    kwargs = dict(cfg.kwargs)
    if cfg.temperature is not None:
        kwargs["temperature"] = cfg.temperature
    lambda_weight = None
    if cfg.label_gain is not None or cfg.list_weights != "label_sum":
        # TF Ranking's softmax loss replaces the labels by a DCG lambda weight's individual weights,
        # gain(label) * discount(rank): with no discount that is the gain alone, and normalized by the
        # ideal DCG (then the sum of the gains) each list's target sums to 1, so every list weighs 1.
        lambda_weight = tfr.keras.losses.DCGLambdaWeight(
            gain_fn=tfr.keras.utils.pow_minus_1 if cfg.label_gain == "exp2" else tfr.keras.utils.identity,
            rank_discount_fn=unit_discount, normalized=cfg.list_weights == "equal")
    if cfg.lambda_weight is not None:
        lw_cls = _LAMBDA_WEIGHTS[cfg.lambda_weight]
        lw_kwargs = {}
        if cfg.lambda_weight_topn is not None and cfg.lambda_weight not in ("label_diff", "list_mle"):
            lw_kwargs["topn"] = cfg.lambda_weight_topn
        lambda_weight = lw_cls(**lw_kwargs)
    return tfr.keras.losses.get(cfg.key, reduction=cfg.reduction, lambda_weight=lambda_weight, **kwargs)


def train_step_loss_only(self: tf.keras.Model, data):
    """Keras' ``Model.train_step`` without the compiled metrics: training batches update the
    weights and the loss; the ranking metrics are left to validation (``metrics.on_train``)."""
    x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = self(x, training=True)
        loss = self.compute_loss(x, y, y_pred, sample_weight)
    self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
    return {m.name: m.result() for m in self.compiled_loss.metrics}


def one_step_per_call(method):
    """``Model.evaluate``/``predict`` run one batch per call into TensorFlow whatever the
    training's ``steps_per_execution``: Keras would give them the training's in-graph loop, whose
    graph (the model plus every ranking metric) takes ~2 s to build, to save a few ms on each of a
    handful of validation batches. The training loop stays as compiled."""

    def call(self: tf.keras.Model, *args, **kwargs):
        steps = self._steps_per_execution
        n = int(steps.numpy())
        steps.assign(1)  # read by Keras when it makes the test/predict function and per call
        try:
            return method(self, *args, **kwargs)
        finally:
            steps.assign(n)

    return call


class RankingPipeline(tfr.keras.pipeline.ModelFitPipeline):
    """``strategy``: made by ``make_strategy`` before TensorFlow's first op (None: no distribution).
    ``is_chief``: whether this process exports (a non-chief worker of a multi-worker run saves
    to a throwaway directory, since every worker must take part in saving). ``resume``: where
    BackupAndRestore keeps its state, or None to train without backups."""

    def __init__(self, model_builder, dataset_builder: RankingDatasetBuilder, run: RunConfig,
                 extra_callbacks: list[tf.keras.callbacks.Callback] = (), *,
                 strategy: tf.distribute.Strategy | None = None, is_chief: bool = True,
                 resume: ResumeDir | None = None, initial_best: float | None = None):
        hparams = tfr.keras.pipeline.PipelineHparams(
            model_dir=run.output_dir,
            num_epochs=run.train.epochs,
            steps_per_epoch=None,  # one pass over the data per epoch
            validation_steps=None,
            learning_rate=run.optimizer.learning_rate,
            loss=run.loss.key,
            optimizer=run.optimizer.name,
            steps_per_execution=1,  # resolved per run: steps_per_execution()
            export_best_model=run.export.best,
            best_exporter_metric=run.metrics.monitor,
            best_exporter_metric_higher_better=True,
            strategy=None,
        )
        super().__init__(model_builder, dataset_builder, hparams)
        self._run = run
        self._strategy = strategy
        with tfr.keras.strategy_utils.strategy_scope(strategy):
            self._optimizer = build_optimizer(run.optimizer, self._run_steps(dataset_builder, run))
        self._extra_callbacks = list(extra_callbacks)
        self._is_chief = is_chief
        self._resume = resume
        self._initial_best = initial_best
        self._best_weights = BestWeights(f"val_{run.metrics.monitor}", initial_best)
        self.epochs_run = EpochsRun()
        self.model: tf.keras.Model | None = None
        self.exports: dict[str, str] = {}

    @staticmethod
    def _run_steps(builder: RankingDatasetBuilder, run: RunConfig) -> int | None:
        """The run's training steps where the schedule needs them (``decay_steps=auto``); the
        training lists are counted first when the data set does not say (``dataset=elwc``)."""
        if run.optimizer.schedule.decay_steps != "auto":
            return None
        if builder.num_batches("train") is None:
            builder.num_lists["train"] = count_records(builder.data.split("train").files)
        return builder.num_batches("train") * run.train.epochs

    def build_loss(self):
        return build_loss(self._run.loss)

    def build_metrics(self):
        return build_metrics(self._run.metrics)

    def build_weighted_metrics(self):
        return build_metrics(self._run.metrics)

    @property
    def best_dir(self) -> str:
        if self._resume is not None:
            return self._resume.best_dir  # survives a kill, like the backup
        return os.path.join(self._hparams.model_dir, "best_checkpoint")

    def build_callbacks(self):
        # Bookkeeping (MLflow) first, so an epoch is recorded even when a later callback (e.g. a
        # sweep's pruning callback) ends training at that epoch; the backup last, so a restored
        # epoch has its metrics recorded and its best checkpoint written.
        train = self._dataset_builder.data.split("train")
        docs = train.num_docs if self._run.train.list_size is None else None  # cut lists: unknown
        built = build_callbacks(self._run, self._hparams.model_dir, best_dir=self.best_dir,
                                initial_best=self._initial_best)
        # The NaN check first: a diverged epoch (found at its end where the check cannot run
        # before validation) reaches no other callback, as if caught at its last batch.
        out: list[tf.keras.callbacks.Callback] = [cb for cb in built if isinstance(cb, StopOnNaN)]
        out += [self.epochs_run, Throughput(docs), *self._extra_callbacks]
        out += [cb for cb in built if not isinstance(cb, StopOnNaN)]
        if self._resume is not None:
            if self._is_chief:  # the best value so far, before the backup that makes it count
                out.append(make_state_callback(self._resume, f"val_{self._run.metrics.monitor}"))
            out.append(tf.keras.callbacks.BackupAndRestore(backup_dir=self._resume.backup_dir))
        if isinstance(self._strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # On every worker: reading weights (batch-norm statistics) is a collective operation.
            out.append(self._best_weights)
        if is_parameter_server(self._strategy):
            _check_epoch_level(out)
        return out

    def train_and_validate(self, verbose=0):
        """TF Ranking's ``train_and_validate`` with exports that work under every strategy: the
        chief exports to the run dir, other workers save to a throwaway directory (TF Ranking's
        version treats worker 0 of a chief-less cluster as a non-chief and loads the best
        checkpoint on every worker from a directory only the chief writes)."""
        strategy = self._strategy
        callbacks = self.build_callbacks()
        steps_per_execution = self.steps_per_execution(callbacks)
        with tfr.keras.strategy_utils.strategy_scope(strategy):
            model = self._model_builder.build()
            model.compile(
                optimizer=self._optimizer,
                loss=self.build_loss(),
                metrics=self.build_metrics(),
                loss_weights=self._hparams.loss_weights,
                weighted_metrics=(self.build_weighted_metrics() if self._hparams.use_weighted_metrics else None),
                steps_per_execution=steps_per_execution,
                # Exact evaluation: every validation list is scored once, by one shard per worker
                # (the dataset builder shards by file or data for as many), so validation metrics
                # match a single-process evaluation.
                **({"pss_evaluation_shards": num_workers(strategy)} if is_parameter_server(strategy) else {}))
            if not self._run.metrics.on_train:
                model.train_step = types.MethodType(train_step_loss_only, model)
            if steps_per_execution > 1 and not is_parameter_server(strategy):
                for name in ("evaluate", "predict"):
                    setattr(model, name, types.MethodType(one_step_per_call(getattr(type(model), name)), model))
            build_slots(model.optimizer, model.trainable_variables)
            if is_parameter_server(strategy):
                if not model.compiled_metrics.built:
                    # Exact evaluation reads the compiled metrics before any step has built them
                    # (training steps without metrics never do): build them on the one output.
                    model.compiled_metrics.build(tf.zeros([1, 1]), tf.zeros([1, 1]))
                train_dataset, steps_per_epoch = self._parameter_server_input()
                if verbose == 1:  # Keras refuses the progress bar under ParameterServerStrategy
                    log.info("train.verbose=1: strategy=parameter_server prints one line per epoch instead")
                    verbose = 2
            else:
                train_dataset = self._dataset_builder.build_train_dataset()
                steps_per_epoch = self._hparams.steps_per_epoch
                batches = self._dataset_builder.num_batches("train")
                if steps_per_epoch is None and batches and strategy is None:
                    # One iterator for the whole run: Keras would start a new one every epoch
                    # (refilling the shuffle buffer and the prefetch while the step waits), ~10%
                    # of a 15-step MQ2008 epoch. The same batches, epoch by epoch.
                    train_dataset, steps_per_epoch = train_dataset.repeat(), batches
            valid_dataset = self._dataset_builder.build_valid_dataset()
            model.fit(x=train_dataset, epochs=self._hparams.num_epochs, steps_per_epoch=steps_per_epoch,
                      validation_steps=self._hparams.validation_steps, validation_data=valid_dataset,
                      callbacks=callbacks, verbose=verbose)

            root = self._hparams.model_dir if self._is_chief else tempfile.mkdtemp(prefix="ranking_exp_worker_")
            try:
                self.export_saved_model(model, export_to=os.path.join(root, LAST_EXPORT))
                if self._hparams.export_best_model:
                    self._export_best(model, root)
            finally:
                if not self._is_chief:
                    shutil.rmtree(root, ignore_errors=True)
                    self.exports = {}

    def steps_per_execution(self, callbacks: list[tf.keras.callbacks.Callback]) -> int:
        """``train.steps_per_execution``, resolved. ``auto``: a whole epoch per call into
        TensorFlow (no return to Python between batches) for runs of at least
        ``AUTO_MIN_STEPS`` training steps, when every split's lists are counted, no strategy is
        set, no callback needs every batch and no progress bar is drawn; else 1 (the loops cost
        seconds to build and save a few ms a step).
        An explicit N > 1 counts the lists of splits without counts (their datasets must say
        how many batches they hold)."""
        value = self._run.train.steps_per_execution
        builder = self._dataset_builder
        splits = [s for s in ("train", "vali", "test") if builder.data.split(s) is not None]
        if value == "auto":
            hooks = any(cb._implements_train_batch_hooks() for cb in callbacks)
            batches = builder.num_batches("train")
            if (self._strategy is not None or hooks or self._run.train.verbose == 1
                    or any(builder.num_batches(s) is None for s in splits)
                    or batches * self._run.train.epochs < AUTO_MIN_STEPS):
                return 1
            return max(1, batches)
        if value > 1 and not is_parameter_server(self._strategy):
            for s in splits:
                if builder.num_batches(s) is None:
                    builder.num_lists[s] = count_records(builder.data.split(s).files)
        return value

    def _parameter_server_input(self):
        """``(x, steps_per_epoch)`` for ``model.fit`` under ParameterServerStrategy, which needs
        an endless per-worker dataset from a dataset function and a fixed number of steps: an
        epoch is as many steps as one pass over the training lists takes (all workers together),
        and each worker reads every list in its own random order (the steps are asynchronous, so
        a PS run is not bit-reproducible anyway)."""
        builder = self._dataset_builder
        data, train = builder.data, self._run.train
        info = data.split("train")
        num_lists = info.num_lists if info.num_lists is not None else count_records(info.files)
        steps = max(1, math.ceil(num_lists / train.batch_size))

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            del input_context  # one input pipeline per worker: no sharding
            # Traced once on the coordinator and run on every worker: a fixed shuffle seed would
            # give every worker the same order, so the seed is the worker's clock when it builds its
            # dataset (workers do not enable op determinism, which refuses clocks and unseeded ops).
            graph = tf.compat.v1.get_default_graph()
            if graph.seed is not None and graph.seed % (2**31 - 1) == 0:
                graph.seed = 1  # TensorFlow cannot pair a global seed of 0 with a tensor seed
            worker_seed = tf.cast(tf.timestamp() * 1e6, tf.int64) % (2**31 - 1)
            return RankingDatasetBuilder(data, train, seed=worker_seed).build_train_dataset().repeat()

        log.info("strategy=parameter_server: %d steps per epoch (%d training lists, batches of %d)", steps,
                 num_lists, train.batch_size)
        # Keras guesses from the file-name list at the source that exact evaluation cannot shard
        # by file, but the datasets read TFRecord files and carry their shard policy: drop the warning.
        tf_logger = logging.getLogger("tensorflow")
        if not any(isinstance(f, _NoShardabilityWarning) for f in tf_logger.filters):
            tf_logger.addFilter(_NoShardabilityWarning())
        return tf.keras.utils.experimental.DatasetCreator(dataset_fn), steps

    def _export_best(self, model: tf.keras.Model, root: str) -> None:
        best_checkpoint = tf.train.latest_checkpoint(self.best_dir)
        if not self._is_chief and best_checkpoint is None:
            if self._best_weights.weights is None:  # every worker must save as often as the chief
                raise ValueError("Didn't find the best checkpoint.")
            model.set_weights(self._best_weights.weights)
            best_checkpoint = None
        elif best_checkpoint is None:
            raise ValueError("Didn't find the best checkpoint.")
        self.export_saved_model(model, export_to=os.path.join(root, BEST_EXPORT), checkpoint=best_checkpoint)
        self.exports["best"] = os.path.join(root, BEST_EXPORT)
        if self._is_chief and self._resume is not None:  # the run dir keeps its best checkpoint too
            shutil.copytree(self.best_dir, os.path.join(self._hparams.model_dir, "best_checkpoint"), dirs_exist_ok=True)

    def export_saved_model(self, model, export_to, checkpoint=None):
        """TF Ranking's export, plus the feature spec beside it (the serving format).

        ``save_traces=False``: the signatures serve the model, and skipping Keras' per-layer
        traces halves export time.
        """
        if checkpoint:
            model.load_weights(checkpoint)
        model.save(filepath=export_to, save_traces=False,
                   signatures=self._dataset_builder.build_signatures(model, serving_default=self._serving_default()))
        self._dataset_builder.spec.save(export_to)
        self.model = model  # holds the best weights after the best export
        self.exports.setdefault("last", export_to)

    def _serving_default(self) -> str:
        """A scorer whose scores depend on the whole list (e.g. DASALC) serves whole lists by
        default; TF Ranking's per-document ``regress`` would score each document alone."""
        scorer = getattr(self._model_builder, "_scorer", None)
        univariate = isinstance(scorer, (tfr.keras.model.UnivariateScorer, PackedScorer)) or scorer is None
        return "regress" if univariate else "predict"

    @property
    def strategy(self):
        return self._strategy

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """The configured metrics of the trained model (best weights when exported) on ``dataset``."""
        results = self.model.evaluate(dataset, return_dict=True, verbose=0)
        return {k: float(v) for k, v in results.items() if k != "loss"}

    @staticmethod
    def export_dirs(model_dir: str) -> dict[str, str]:
        return {"last": os.path.join(model_dir, LAST_EXPORT), "best": os.path.join(model_dir, BEST_EXPORT)}


class _NoShardabilityWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is not efficiently shardable" not in record.getMessage()


def _check_epoch_level(callbacks: list[tf.keras.callbacks.Callback]) -> None:
    """Keras runs no batch-level callback under ParameterServerStrategy (it fails mid-``fit``):
    name the first one in one line before training."""
    for cb in callbacks:
        if getattr(cb, "_supports_tf_logs", False):
            continue  # Keras' own callbacks that take the coordinator's remote values
        if cb._implements_train_batch_hooks() or cb._implements_test_batch_hooks():
            raise ConfigError(f"callbacks: {type(cb).__module__}.{type(cb).__name__} has batch-level hooks "
                              "(on_*_batch_*), which strategy=parameter_server does not run; use epoch-level ones")


def count_records(files: list[str]) -> int:
    """TFRecords (ELWC: one list each) in ``files``, from the record headers alone: the training
    lists of data whose counts are unknown (``dataset=elwc``)."""
    total = 0
    for path in files:
        with tf.io.gfile.GFile(path, "rb") as f:
            while True:
                header = f.read(12)  # uint64 length, uint32 masked CRC of the length
                if not header:
                    break
                if len(header) < 12:
                    raise DataError(f"{path}: not a complete TFRecord file (a truncated record header)")
                (length,) = struct.unpack("<Q", header[:8])
                f.seek(length + 4, 1)  # the data and its CRC
                total += 1
    return total
