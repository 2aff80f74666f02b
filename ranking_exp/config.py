"""Structured configs: one validated dataclass per config group option.

Each class is stored in Hydra's ConfigStore under ``schema/<group>/<option>``; the YAML file
``conf/<group>/<option>.yaml`` extends it (``- /schema/<group>/<option>@_here_``), so a typo in
a key or a value of the wrong type fails at composition, and ``__post_init__`` checks ranges
when :func:`to_run_config` turns the composed config into these objects — all before
TensorFlow is imported. Adding an option means adding a class here and a YAML file.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ranking_exp.errors import ConfigError

DEFAULT_CACHE_DIR = "${oc.env:RANKING_EXP_CACHE_DIR,'~/.cache/ranking_exp'}"

# Which group a dataclass belongs to; filled by @option.
_GROUP_OF: dict[type, str] = {}
REGISTRY: dict[str, dict[str, type]] = {}


def option(group: str, *names: str):
    """Registers a dataclass as the schema of one or more options of ``group``."""

    def wrap(cls):
        _GROUP_OF[cls] = group
        for name in names:
            REGISTRY.setdefault(group, {})[name] = cls
        return cls

    return wrap


def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {problem}")


def _check_import_path(value: str, key: str) -> None:
    _check(bool(value) and "." in value and all(p.isidentifier() for p in value.split(".")), key,
           f"{value!r} is not an import path like 'package.module.Name'")


# --------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------
@option("dataset", "synthetic")
@dataclass
class SyntheticDatasetConfig:
    """A deterministic synthetic ranking set with learnable signal (the embedded default)."""

    kind: str = "synthetic"
    num_train: int = 2000
    num_vali: int = 300
    num_test: int = 300
    min_docs: int = 5
    max_docs: int = 60
    seed: int = 0
    num_shards: int = 2
    cache_dir: str = DEFAULT_CACHE_DIR

    def __post_init__(self):
        for key in ("num_train", "num_vali", "num_test", "num_shards"):
            _check(getattr(self, key) > 0, f"dataset.{key}", "must be > 0")
        _check(1 <= self.min_docs <= self.max_docs, "dataset.min_docs",
               "must satisfy 1 <= min_docs <= max_docs")


@option("dataset", "letor")
@dataclass
class LetorDatasetConfig:
    """LibSVM/LETOR text in a fold directory (train/vali/test .txt or .txt.gz)."""

    kind: str = "letor"
    path: str = MISSING
    num_shards: int = 4
    cache_dir: str = DEFAULT_CACHE_DIR
    progress: bool = True
    # Cross-validation: null trains on the one fold in ``path``; a list of fold folder names
    # (``[Fold1,Fold2]``) or ``all`` runs each fold of the folder ``path`` (one MLflow child run
    # per fold, mean and std on the parent; see ranking_exp/cv.py).
    folds: Any = None

    def __post_init__(self):
        _check(self.num_shards > 0, "dataset.num_shards", "must be > 0")
        if self.folds is not None:
            self.fold_dirs()  # a missing fold stops the command here, before any training

    def fold_dirs(self) -> list:
        """``[(name, Path)]`` of the folds to run (``dataset.folds`` set); ConfigError if one is missing."""
        from ranking_exp.data.folds import resolve_folds

        return resolve_folds(self.path, self.folds)


@option("dataset", "elwc")
@dataclass
class ElwcDatasetConfig:
    """Existing ExampleListWithContext TFRecord shards described by a feature_spec.json."""

    kind: str = "elwc"
    train: str = MISSING
    vali: Optional[str] = None
    test: Optional[str] = None
    feature_spec: str = MISSING

    def __post_init__(self):
        _check(bool(self.train), "dataset.train", "needs a file pattern")


# --------------------------------------------------------------------------------------
# scorer
# --------------------------------------------------------------------------------------
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "tanh", "sigmoid", "swish", "leaky_relu", "linear")


def _check_tower(dims: list[int], dropout: float, activation: str, key: str) -> None:
    _check(len(dims) > 0 and all(d > 0 for d in dims), f"{key}", "hidden dims must be positive")
    _check(0.0 <= dropout < 1.0, "scorer.dropout", "must be in [0, 1)")
    _check(activation in ACTIVATIONS, "scorer.activation", f"{activation!r} not in {ACTIVATIONS}")


@dataclass
class NumericEmbeddingConfig:
    """How each (preprocessed, input-batch-normalized, noised) feature enters the tower: as it is
    (``none``) or as a periodic embedding (``periodic``: Gorishniy et al. 2022's PLR,
    ``ranking_exp/model/numeric_embedding.py``), which lets a tower learn sharp functions of one
    feature, as trees do."""

    kind: str = "none"  # none | periodic
    frequencies: int = 48  # trainable frequencies per feature (k)
    sigma: float = 0.01  # stddev of their initial values: the scale of the functions at the start
    dim: int = 24  # each feature's embedding width; the tower's input is (features x dim) wide
    lite: bool = False  # one linear map shared by all features instead of one per feature

    def check(self) -> None:
        key = "scorer.numeric_embedding"
        _check(self.kind in ("none", "periodic"), f"{key}.kind", f"{self.kind!r} not in ('none', 'periodic')")
        for name in ("frequencies", "dim"):
            value = getattr(self, name)
            _check(value > 0, f"{key}.{name}", f"must be > 0 (got {value})")
        _check(math.isfinite(self.sigma) and self.sigma > 0, f"{key}.sigma", f"must be > 0 (got {self.sigma})")

    def layer_kwargs(self) -> dict | None:
        """The embedding layer's arguments, or None when features enter as they are."""
        if self.kind == "none":
            return None
        return dict(frequencies=self.frequencies, sigma=self.sigma, dim=self.dim, lite=self.lite)


@option("scorer", "dnn")
@dataclass
class DNNScorerConfig:
    """TF Ranking's DNNScorer: a feed-forward tower over context + example features."""

    kind: str = "dnn"
    hidden_layer_dims: list[int] = field(default_factory=lambda: [256, 128, 64])
    activation: str = "relu"
    use_batch_norm: bool = True
    input_batch_norm: bool = False
    batch_norm_moment: float = 0.99
    dropout: float = 0.2
    # Stddev of Gaussian noise added to each document's (preprocessed, input-batch-normalized
    # where on) feature vector, in training only (DASALC's data augmentation); 0: off.
    input_noise: float = 0.0
    # Dropout masks from 8 random bits per unit (rate rounded to 1/256) and the fused batch-norm
    # kernel: the same function, ~13% less step time on CPU (ranking_exp/model/fast_layers.py).
    # false: TF Ranking's tower layer for layer.
    fast_layers: bool = True
    # Features into the tower as they are, or embedded (after input batch norm and noise).
    numeric_embedding: NumericEmbeddingConfig = field(default_factory=NumericEmbeddingConfig)

    def __post_init__(self):
        _check_tower(self.hidden_layer_dims, self.dropout, self.activation, "scorer.hidden_layer_dims")
        _check(0.0 < self.batch_norm_moment < 1.0, "scorer.batch_norm_moment", "must be in (0, 1)")
        _check_input_noise(self.input_noise)
        self.numeric_embedding.check()


def _check_input_noise(value: float) -> None:
    _check(math.isfinite(value) and value >= 0, "scorer.input_noise", f"must be >= 0 (got {value})")


@option("scorer", "dasalc")
@dataclass
class DASALCScorerConfig:
    """DASALC (Qin et al., ICLR 2021, "Are Neural Rankers still Outperformed by Gradient Boosted
    Decision Trees?"): each document's features (input batch norm, Gaussian noise in training)
    go through a feed-forward tower; in parallel, multi-head self-attention over the documents
    of the same list (TF Ranking's DocumentInteractionAttention, masked); the two are combined
    by a latent cross, ``tower * (1 + projected attention)``, and a dense layer scores it. Scores
    depend on the whole list (not a univariate scorer)."""

    kind: str = "dasalc"
    hidden_layer_dims: list[int] = field(default_factory=lambda: [256, 128, 64])
    activation: str = "relu"
    use_batch_norm: bool = True
    input_batch_norm: bool = True
    batch_norm_moment: float = 0.99
    dropout: float = 0.2
    input_noise: float = 0.1
    num_attention_layers: int = 2
    num_heads: int = 2
    head_size: int = 64  # each head's key size, and the width of the attention output
    attention_dropout: float = 0.1
    fast_layers: bool = True  # as for scorer=dnn: cheaper dropout and batch-norm kernels in the tower
    # as for scorer=dnn; the embedded features feed both the tower and the attention
    numeric_embedding: NumericEmbeddingConfig = field(default_factory=NumericEmbeddingConfig)

    def __post_init__(self):
        _check_tower(self.hidden_layer_dims, self.dropout, self.activation, "scorer.hidden_layer_dims")
        _check(0.0 < self.batch_norm_moment < 1.0, "scorer.batch_norm_moment", "must be in (0, 1)")
        _check_input_noise(self.input_noise)
        self.numeric_embedding.check()
        for key in ("num_attention_layers", "num_heads", "head_size"):
            _check(getattr(self, key) > 0, f"scorer.{key}", f"must be > 0 (got {getattr(self, key)})")
        _check(0.0 <= self.attention_dropout < 1.0, "scorer.attention_dropout", "must be in [0, 1)")


@option("scorer", "gam")
@dataclass
class GAMScorerConfig:
    """TF Ranking's GAMScorer: a neural generalized additive model (one sub-tower per feature)."""

    kind: str = "gam"
    example_hidden_layer_dims: list[int] = field(default_factory=lambda: [16, 8])
    context_hidden_layer_dims: list[int] = field(default_factory=lambda: [16, 8])
    activation: str = "relu"
    use_batch_norm: bool = True
    batch_norm_moment: float = 0.99
    dropout: float = 0.1

    def __post_init__(self):
        _check_tower(self.example_hidden_layer_dims, self.dropout, self.activation,
                     "scorer.example_hidden_layer_dims")
        _check_tower(self.context_hidden_layer_dims, self.dropout, self.activation,
                     "scorer.context_hidden_layer_dims")


@option("scorer", "linear")
@dataclass
class LinearScorerConfig:
    """A univariate linear scorer: one weight per (preprocessed) feature."""

    kind: str = "linear"
    l2: float = 0.0

    def __post_init__(self):
        _check(self.l2 >= 0, "scorer.l2", "must be >= 0")


@option("scorer", "custom")
@dataclass
class CustomScorerConfig:
    """A user's scorer: ``target`` is an import path to a ``tfr.keras.model.Scorer`` class or
    factory, called with ``kwargs``."""

    kind: str = "custom"
    target: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check_import_path(self.target, "scorer.target")


# LightGBM parameters the fields below set (by their LightGBM scikit-learn names or aliases).
LIGHTGBM_FIELDS = ("learning_rate", "num_leaves", "max_depth", "min_child_samples", "min_child_weight",
                   "subsample", "subsample_freq", "colsample_bytree", "reg_alpha", "reg_lambda",
                   "min_split_gain", "max_bin")


@option("scorer", "lightgbm")
@dataclass
class LightGBMScorerConfig:
    """LambdaMART with LightGBM (``objective=lambdarank``): gradient-boosted trees trained on the
    same prepared data and evaluated with the same metrics as the neural scorers (see
    ranking_exp/gbdt.py). ``loss``, ``optimizer``, ``preprocess``, ``callbacks`` and ``train``
    (but ``train.threads`` and ``train.deterministic``) do not apply to it."""

    kind: str = "lightgbm"
    num_boost_round: int = 1000  # most trees; early stopping on vali usually stops sooner
    early_stopping_rounds: Optional[int] = 50  # stop after this many rounds without a better vali metric; null: never
    learning_rate: float = 0.05
    num_leaves: int = 31
    max_depth: int = -1  # -1: no limit
    min_child_samples: int = 20  # min_data_in_leaf
    min_child_weight: float = 1e-3  # min_sum_hessian_in_leaf
    subsample: float = 1.0  # bagging_fraction (needs subsample_freq > 0)
    subsample_freq: int = 0  # bagging_freq: bag every k iterations; 0: no bagging
    colsample_bytree: float = 1.0  # feature_fraction
    reg_alpha: float = 0.0  # lambda_l1
    reg_lambda: float = 0.0  # lambda_l2
    min_split_gain: float = 0.0
    max_bin: int = 255
    # Any other LightGBM parameter, e.g. {lambdarank_truncation_level: 20, label_gain: [0, 1, 3, 7]}.
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.num_boost_round > 0, "scorer.num_boost_round", "must be > 0")
        _check(self.early_stopping_rounds is None or self.early_stopping_rounds > 0,
               "scorer.early_stopping_rounds", "must be > 0 or null")
        _check(math.isfinite(self.learning_rate) and self.learning_rate > 0, "scorer.learning_rate",
               f"must be > 0 (got {self.learning_rate})")
        _check(self.num_leaves > 1, "scorer.num_leaves", "must be > 1")
        _check(self.max_depth != 0, "scorer.max_depth", "must be > 0, or -1 for no limit")
        _check(self.min_child_samples >= 0, "scorer.min_child_samples", "must be >= 0")
        _check(self.min_child_weight >= 0, "scorer.min_child_weight", "must be >= 0")
        _check(0 < self.subsample <= 1, "scorer.subsample", "must be in (0, 1]")
        _check(self.subsample_freq >= 0, "scorer.subsample_freq", "must be >= 0")
        _check(self.subsample == 1 or self.subsample_freq > 0, "scorer.subsample",
               f"{self.subsample} < 1 needs scorer.subsample_freq > 0 (LightGBM bags only then)")
        _check(0 < self.colsample_bytree <= 1, "scorer.colsample_bytree", "must be in (0, 1]")
        for key in ("reg_alpha", "reg_lambda", "min_split_gain"):
            _check(getattr(self, key) >= 0, f"scorer.{key}", "must be >= 0")
        _check(self.max_bin > 1, "scorer.max_bin", "must be > 1")
        for key in self.params:
            _check(key not in LIGHTGBM_FIELDS and key not in ("objective", "metric", "eval_at", "num_iterations"),
                   f"scorer.params.{key}", "is set by ranking_exp (use its own key under scorer.*)")


# --------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------
LOSS_KEYS = (
    "softmax_loss", "unique_softmax_loss", "calibrated_softmax_loss", "approx_ndcg_loss",
    "approx_mrr_loss", "gumbel_approx_ndcg_loss", "pairwise_logistic_loss", "pairwise_hinge_loss",
    "pairwise_soft_zero_one_loss", "pairwise_mse_loss", "yeti_logistic_loss", "list_mle_loss",
    "sigmoid_cross_entropy_loss", "mean_squared_loss", "coupled_rankdistil_loss",
    # ordinal_loss is left out: it needs one output per grade (rank-3 scores), not a score per document.
)
LAMBDA_WEIGHTS = ("ndcg", "ndcg_v2", "dcg", "label_diff", "precision", "list_mle", "yeti_dcg")
LABEL_GAINS = ("exp2",)
LIST_WEIGHTS = ("label_sum", "equal")
# Losses built on pairs or on a Plackett-Luce list model take a lambda weight.
LAMBDA_LOSSES = (
    "pairwise_logistic_loss", "pairwise_hinge_loss", "pairwise_soft_zero_one_loss",
    "pairwise_mse_loss", "yeti_logistic_loss", "list_mle_loss", "softmax_loss",
)


@option("loss", *(k.removesuffix("_loss") for k in LOSS_KEYS))
@dataclass
class LossConfig:
    """A TF Ranking Keras loss (``tfr.keras.losses.get`` key) with its lambda weight."""

    key: str = "softmax_loss"
    lambda_weight: Optional[str] = None
    lambda_weight_topn: Optional[int] = None
    temperature: Optional[float] = None
    # softmax_loss's target: null is TF Ranking's (each document's share of the list's labels);
    # exp2 is its share of the list's NDCG gains, 2^label - 1 (Bruch et al., "An Alternative Cross
    # Entropy Loss for Learning-to-Rank", 2019, without their random offset): on 0-2 labels a 2 weighs
    # 3 times a 1 instead of twice, as in the metric.
    label_gain: Optional[str] = None
    # softmax_loss weighs each list's cross entropy by the sum of its target (label_sum, TF Ranking's);
    # equal weighs every list with a relevant document the same, as a mean of per-query NDCG does.
    list_weights: str = "label_sum"
    reduction: str = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.key in LOSS_KEYS, "loss.key", f"{self.key!r} is not a TF Ranking loss key")
        if self.lambda_weight is not None:
            _check(self.lambda_weight in LAMBDA_WEIGHTS, "loss.lambda_weight",
                   f"{self.lambda_weight!r} not in {LAMBDA_WEIGHTS}")
            _check(self.key in LAMBDA_LOSSES, "loss.lambda_weight",
                   f"{self.key} takes no lambda weight (only {', '.join(LAMBDA_LOSSES)})")
        _check(self.lambda_weight_topn is None or self.lambda_weight_topn > 0,
               "loss.lambda_weight_topn", "must be > 0")
        _check(self.temperature is None or self.temperature > 0, "loss.temperature", "must be > 0")
        if self.label_gain is not None:
            _check(self.label_gain in LABEL_GAINS, "loss.label_gain", f"{self.label_gain!r} not in {LABEL_GAINS}")
            _check(self.key == "softmax_loss", "loss.label_gain", f"only softmax_loss takes one, not {self.key}")
            _check(self.lambda_weight is None, "loss.label_gain",
                   "set either it or loss.lambda_weight (both weight the softmax target)")
        _check(self.list_weights in LIST_WEIGHTS, "loss.list_weights", f"{self.list_weights!r} not in {LIST_WEIGHTS}")
        if self.list_weights != "label_sum":
            _check(self.key == "softmax_loss", "loss.list_weights", f"only softmax_loss takes them, not {self.key}")
            _check(self.lambda_weight is None, "loss.list_weights",
                   "set either it or loss.lambda_weight (both weight the softmax target)")
        _check(self.reduction in ("auto", "sum", "sum_over_batch_size", "none"), "loss.reduction",
               f"{self.reduction!r} is not a Keras reduction")


# --------------------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------------------
SCHEDULES = ("constant", "exponential", "cosine", "cosine_restarts", "linear_warmup_cosine")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over training steps (batches)."""

    kind: str = "constant"
    # Steps to decay over; auto: the whole run (train.epochs x batches per epoch, less the warm-up),
    # so the schedule keeps its shape when the epochs, the batch size or the data change.
    decay_steps: Any = 1000
    decay_rate: float = 0.9
    alpha: float = 0.0
    warmup_steps: int = 0
    staircase: bool = False

    def __post_init__(self):
        _check(self.kind in SCHEDULES, "optimizer.schedule.kind", f"{self.kind!r} not in {SCHEDULES}")
        d = self.decay_steps
        _check(d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and d > 0),
               "optimizer.schedule.decay_steps", f"must be auto or a whole number > 0 (got {d!r})")
        _check(0 < self.decay_rate <= 1, "optimizer.schedule.decay_rate", "must be in (0, 1]")
        _check(self.warmup_steps >= 0, "optimizer.schedule.warmup_steps", "must be >= 0")


@option("optimizer", "adam", "adagrad", "sgd")
@dataclass
class OptimizerConfig:
    """A Keras optimizer with its learning rate and schedule."""

    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    initial_accumulator_value: float = 0.1
    clipnorm: Optional[float] = None
    # Decoupled weight decay (AdamW, Loshchilov & Hutter 2019): each step, every weight matrix
    # w -= lr_t * weight_decay * w before the gradient step; biases and batch-norm parameters are
    # not decayed. 0: none (the plain optimizer).
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # true: Keras's tf.keras.optimizers.legacy classes, which update each variable with one fused
    # kernel (ResourceApplyAdam, ...): the same update rule, ~9% less step time on CPU, where the
    # new optimizers run as many small ops per variable (they only fuse with XLA, on GPU).
    fused: bool = True

    def __post_init__(self):
        _check(self.name in ("adam", "adagrad", "sgd"), "optimizer.name", f"{self.name!r} not in adam, adagrad, sgd")
        _check(math.isfinite(self.learning_rate) and self.learning_rate > 0, "optimizer.learning_rate",
               f"must be > 0 (got {self.learning_rate})")
        _check(0 <= self.momentum < 1, "optimizer.momentum", "must be in [0, 1)")
        _check(self.clipnorm is None or self.clipnorm > 0, "optimizer.clipnorm", "must be > 0")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "optimizer.weight_decay",
               f"must be >= 0 (got {self.weight_decay})")
        if isinstance(self.schedule, dict):  # built by hand rather than by OmegaConf
            self.schedule = ScheduleConfig(**self.schedule)


# --------------------------------------------------------------------------------------
# strategy
# --------------------------------------------------------------------------------------
STRATEGIES = ("none", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu")
PARTITIONERS = ("none", "fixed_shards", "min_size_max_shards", "max_size")


@dataclass
class PartitionerConfig:
    """How ``strategy=parameter_server`` splits variables over the ps tasks
    (``tf.distribute.experimental.partitioners``): ``none`` (one ps holds each variable),
    ``fixed_shards`` (``num_shards`` shards each), ``min_size_max_shards`` (shards of at least
    ``min_shard_bytes``, at most ``max_shards``; null: one per ps), ``max_size`` (shards of at most
    ``max_shard_bytes``, at most ``max_shards``; null: no limit)."""

    kind: str = "none"
    num_shards: int = 1
    min_shard_bytes: int = 256 << 10
    max_shard_bytes: int = 1 << 20
    max_shards: Optional[int] = None
    bytes_per_string: int = 16

    def __post_init__(self):
        key = "strategy.variable_partitioner"
        _check(self.kind in PARTITIONERS, f"{key}.kind", f"{self.kind!r} not in {', '.join(PARTITIONERS)}")
        for name in ("num_shards", "min_shard_bytes", "max_shard_bytes", "bytes_per_string"):
            _check(getattr(self, name) > 0, f"{key}.{name}", f"must be > 0 (got {getattr(self, name)})")
        _check(self.max_shards is None or self.max_shards > 0, f"{key}.max_shards", "must be > 0 or null")


@option("strategy", *STRATEGIES)
@dataclass
class StrategyConfig:
    """A ``tf.distribute`` strategy.

    ``multi_worker_mirrored``: the cluster is ``workers`` (``host:port`` of every worker, worker 0
    is the chief) with this process's ``task_index``, or else ``TF_CONFIG``; with neither, one
    worker with its local devices. ``parameter_server``: the cluster is ``TF_CONFIG`` with a
    ``chief`` (the coordinator, which trains and records), ``worker`` and ``ps`` tasks; worker and
    ps tasks only serve. ``tpu``: ``tpu`` is the TPU's address (``grpc://host:port``, a TPU name, or
    empty/``local`` on a TPU VM).
    """

    kind: str = "none"
    devices: Optional[list[str]] = None
    tpu: str = ""
    workers: list[str] = field(default_factory=list)
    task_index: int = 0
    # Seconds to wait for the other workers to come up, and for a collective operation to
    # complete (a dead worker fails the others after this long instead of hanging them).
    connect_timeout: float = 120.0
    collective_timeout: float = 600.0
    # Dataset sharding across workers: auto = by file when every worker gets at least one
    # shard of the split, else by data (every worker reads everything and keeps its part);
    # train.document_dropout's training split always by data.
    shard_policy: str = "auto"
    # parameter_server: how variables are split over the ps tasks.
    variable_partitioner: PartitionerConfig = field(default_factory=PartitionerConfig)

    def __post_init__(self):
        _check(self.kind in STRATEGIES, "strategy.kind", f"{self.kind!r} not in {STRATEGIES}")
        if isinstance(self.variable_partitioner, dict):  # built by hand rather than by OmegaConf
            self.variable_partitioner = PartitionerConfig(**self.variable_partitioner)
        _check(self.connect_timeout > 0, "strategy.connect_timeout", "must be > 0")
        _check(self.collective_timeout > 0, "strategy.collective_timeout", "must be > 0")
        _check(self.shard_policy in ("auto", "file", "data"), "strategy.shard_policy",
               f"{self.shard_policy!r} not in auto, file, data")
        if self.kind != "parameter_server":
            _check(self.variable_partitioner.kind == "none", "strategy.variable_partitioner",
                   f"only for strategy=parameter_server (got {self.kind})")
        if self.kind == "parameter_server":
            _check(not self.workers, "strategy.workers", "strategy=parameter_server takes its cluster from TF_CONFIG "
                   "(chief, worker and ps jobs), not strategy.workers")
        elif self.kind != "multi_worker_mirrored":
            _check(not self.workers, "strategy.workers", f"only for strategy=multi_worker_mirrored (got {self.kind})")
        if self.kind in ("multi_worker_mirrored", "parameter_server"):
            self.cluster()  # an index out of range, a bad address or a bad TF_CONFIG stops here

    def cluster(self):
        """The cluster (``ranking_exp.cluster.Cluster``) or None for a single worker."""
        from ranking_exp.cluster import from_config, parameter_server_cluster

        if self.kind == "parameter_server":
            return parameter_server_cluster()
        return from_config(list(self.workers), self.task_index)

    def is_chief(self) -> bool:
        """Whether this process exports and records the run (always, unless a non-chief worker;
        with parameter_server, the coordinator: the ``chief`` task)."""
        if self.kind not in ("multi_worker_mirrored", "parameter_server"):
            return True
        cluster = self.cluster()
        return cluster is None or cluster.is_chief


# --------------------------------------------------------------------------------------
# sections of the root config (not groups)
# --------------------------------------------------------------------------------------
QUANTILE_OUTPUTS = (None, "uniform", "normal")


@dataclass
class FeatureTransform:
    """Per-feature preprocessing, applied in this order: signed log1p, standardize or quantile
    transform, clip.

    ``standardize`` uses mean/variance computed on the training data (after log1p when both
    are on). ``quantile`` maps each value to its rank among the training values (``quantiles``
    points of their distribution, interpolated; tied values to the middle of their block), then to
    ``uniform`` [0, 1] or a standard ``normal`` (scikit-learn's QuantileTransformer, "RankGauss"):
    the usual input for neural nets on tabular features, whatever their scale or skew. Either
    statistic is a constant inside the model, so serving applies it too.
    """

    log1p: bool = True
    standardize: bool = False
    quantile: Optional[str] = None  # null | uniform | normal
    quantiles: int = 1000
    clip_min: Optional[float] = None
    clip_max: Optional[float] = None

    def check(self, key: str) -> None:
        if self.clip_min is not None and self.clip_max is not None:
            _check(self.clip_min < self.clip_max, f"{key}.clip_min", "must be < clip_max")
        _check(self.quantile in QUANTILE_OUTPUTS, f"{key}.quantile",
               f"{self.quantile!r} not in (null, 'uniform', 'normal')")
        _check(not (self.standardize and self.quantile), f"{key}.quantile",
               "cannot be combined with standardize: true (choose one)")
        _check(self.quantiles >= 2, f"{key}.quantiles", f"must be >= 2 (got {self.quantiles})")


@dataclass
class FeatureOverride(FeatureTransform):
    """The transform of one named feature, replacing ``preprocess.default`` for it."""

    name: str = ""


@dataclass
class PreprocessConfig:
    default: FeatureTransform = field(default_factory=FeatureTransform)
    # e.g. preprocess.features=[{name: doc_length, standardize: true, clip_min: -5, clip_max: 5}]
    features: list[FeatureOverride] = field(default_factory=list)
    # Import path of a tfr.keras.model.Preprocessor class/factory, called with
    # (feature_spec=..., **custom_kwargs); replaces the per-feature transforms.
    custom: Optional[str] = None
    custom_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.default.check("preprocess.default")
        seen = set()
        for i, t in enumerate(self.features):
            _check(bool(t.name), f"preprocess.features[{i}].name", "must name a feature")
            _check(t.name not in seen, f"preprocess.features[{i}].name", f"{t.name!r} is listed twice")
            seen.add(t.name)
            t.check(f"preprocess.features[{i}]")
        if self.custom is not None:
            _check_import_path(self.custom, "preprocess.custom")


@dataclass
class ModelConfig:
    # Import path of a tfr.keras.model.AbstractModelBuilder class/factory, called with
    # (feature_spec=..., **builder_kwargs); replaces input creator, preprocessor and scorer.
    builder: Optional[str] = None
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    # Run a univariate scorer's tower on real documents only (ranking_exp/model/packing.py);
    # false: TF Ranking's own flattening, which scores every padded slot too.
    pack_lists: bool = True

    def __post_init__(self):
        if self.builder is not None:
            _check_import_path(self.builder, "model.builder")


@dataclass
class TensorBoardConfig:
    enabled: bool = True
    histogram_freq: int = 0
    update_freq: str = "epoch"


@dataclass
class CheckpointConfig:
    """Weights saved after each epoch (``checkpoints/last``) and on a new best validation
    score (``checkpoints/best``), which is exported as the best model."""

    enabled: bool = True


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    patience: int = 5
    min_delta: float = 0.0
    restore_best_weights: bool = False

    def __post_init__(self):
        _check(self.patience > 0, "callbacks.early_stopping.patience", "must be > 0")


@dataclass
class ReduceLRConfig:
    enabled: bool = False
    factor: float = 0.5
    patience: int = 2
    min_lr: float = 0.0

    def __post_init__(self):
        _check(0 < self.factor < 1, "callbacks.reduce_lr.factor", "must be in (0, 1)")
        _check(self.patience > 0, "callbacks.reduce_lr.patience", "must be > 0")


@dataclass
class CallbacksConfig:
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    reduce_lr: ReduceLRConfig = field(default_factory=ReduceLRConfig)
    # More Keras callbacks as Hydra ``_target_`` nodes, e.g. the sweeper's pruning callback.
    extra: list[Any] = field(default_factory=list)


@dataclass
class MetricsConfig:
    """Ranking metrics reported every epoch on validation and at the end on test.

    ``convention``: ``standard`` is gain 2^label - 1, discount 1/log2(rank + 1), ties broken
    at random (TF Ranking's metrics); ``letor`` reproduces LETOR 4.0's evaluation script
    (Eval-Score-4.0.pl; rules in ranking_exp/metrics.py).

    ``lists_without_relevant``: ``skip`` leaves queries with no relevant document out of
    every metric's average (the LightGBM-practice convention used in our reference numbers);
    ``zero`` counts them as 0 (TF Ranking's own default, and LETOR 4.0's). null: ``skip`` under
    the standard convention, ``zero`` under ``letor`` (which allows nothing else).
    """

    ndcg_topn: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    map: bool = True
    mrr: bool = True
    convention: str = "standard"
    lists_without_relevant: Optional[str] = None
    monitor: str = "ndcg_10"
    # Also compute the ranking metrics on every training batch (Keras' default). Off: training
    # logs only the loss, which saves their graph (~3 s per run) and ~10% of every step; the
    # validation metrics, which select models and drive sweeps, are computed either way.
    on_train: bool = False

    def __post_init__(self):
        _check(all(k > 0 for k in self.ndcg_topn), "metrics.ndcg_topn", "cut-offs must be > 0")
        _check(self.convention in ("standard", "letor"), "metrics.convention",
               f"{self.convention!r} not in standard, letor")
        if self.lists_without_relevant is None:
            self.lists_without_relevant = "zero" if self.convention == "letor" else "skip"
        _check(self.lists_without_relevant in ("skip", "zero"), "metrics.lists_without_relevant",
               "must be 'skip' or 'zero'")
        _check(self.convention == "standard" or self.lists_without_relevant == "zero",
               "metrics.lists_without_relevant", "metrics.convention=letor counts queries without a relevant "
               "document as 0, as LETOR 4.0's script does ('skip' needs metrics.convention=standard)")
        names = self.names()
        _check(self.monitor in names, "metrics.monitor", f"{self.monitor!r} not among {names}")

    def names(self) -> list[str]:
        return [f"ndcg_{k}" for k in self.ndcg_topn] + ["map"] * self.map + ["mrr"] * self.mrr


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    # None pads each batch to its longest list; an int pads/truncates every list to it.
    list_size: Optional[int] = None
    shuffle_buffer: int = 1000
    # Parsed lists kept in memory after the first epoch (ranking_exp/data/builder.py): auto does
    # it when the data take under a quarter of the machine's memory; none re-parses every epoch.
    cache: str = "auto"
    # Training steps per call into TensorFlow (Keras' compile(steps_per_execution)): auto runs a
    # whole epoch per call in runs of 100+ steps when the lists are counted, with no strategy,
    # no callback that needs every batch and no progress bar (else 1: the loop costs ~0.3 s to
    # build); an int N > 0 sets it (batch callbacks then see every Nth batch). Validation and
    # prediction run one batch per call either way.
    steps_per_execution: Any = "auto"
    verbose: int = 2
    deterministic: bool = True
    # CPU threads for TensorFlow's ops (null: all cores). Set it when trials run in parallel
    # (hydra/launcher=joblib) so they don't fight over cores.
    threads: Optional[int] = None
    # Resumable training (Keras BackupAndRestore): the state after every epoch goes to
    # backup_dir; a run killed or failed and started again with the same command continues
    # from there (and in the same MLflow run). null: <launch dir>/.ranking_exp/backups/<hash of
    # the composed config>, so "the same command" finds it although Hydra's run dir changes.
    resume: bool = True
    backup_dir: Optional[str] = None
    # The splits whose lists train the model. [train, vali] refits a configuration already chosen
    # on validation (scikit-learn's refit) on a third more data: nothing is chosen on vali any more
    # (the last epoch is exported, LightGBM first finds its number of trees by early stopping on
    # vali, then refits that many on both), and validation metrics become in-sample.
    splits: list[str] = field(default_factory=lambda: ["train"])
    # List augmentation for small collections: every epoch, each training document is left out of
    # its list with this probability (drawn anew per epoch, seeded by ``seed``), so the model sees
    # new lists of the same queries. A left-out document is padding to the model and the loss
    # (mask off, label < 0, features at their defaults); a list that would lose all its documents
    # keeps them all. Validation, test and serving lists are always whole.
    document_dropout: float = 0.0

    def __post_init__(self):
        _check(self.epochs > 0, "train.epochs", f"must be > 0 (got {self.epochs})")
        _check(math.isfinite(self.document_dropout) and 0 <= self.document_dropout < 1, "train.document_dropout",
               f"must be in [0, 1) (got {self.document_dropout})")
        _check(list(self.splits) in (["train"], ["train", "vali"]), "train.splits",
               f"must be [train] or [train, vali] (got {list(self.splits)})")
        _check(self.batch_size > 0, "train.batch_size", "must be > 0")
        _check(self.eval_batch_size > 0, "train.eval_batch_size", "must be > 0")
        _check(self.list_size is None or self.list_size > 0, "train.list_size", "must be > 0 or null")
        spe = self.steps_per_execution
        _check(spe == "auto" or (isinstance(spe, int) and not isinstance(spe, bool) and spe > 0),
               "train.steps_per_execution", f"must be auto or a whole number > 0 (got {spe!r})")
        _check(self.cache in ("auto", "memory", "none"), "train.cache",
               f"must be auto, memory or none (got {self.cache!r})")
        _check(self.verbose in (0, 1, 2), "train.verbose", "must be 0, 1 or 2")
        _check(self.threads is None or self.threads > 0, "train.threads", "must be > 0 or null")

    @property
    def refit(self) -> bool:
        """Whether validation lists train the model too (``splits=[train, vali]``)."""
        return "vali" in self.splits


@dataclass
class TrackingConfig:
    """MLflow: one run per training. A relative sqlite path is relative to the launch dir."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "ranking_exp"
    run_name: Optional[str] = None
    log_model: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None  # nest this run under another (a sweep's parent run)

    def __post_init__(self):
        _check(bool(self.experiment), "tracking.experiment", "must not be empty")


@dataclass
class ExportConfig:
    best: bool = True


_MAX_SEED = 2**32 - 1  # NumPy's seed range (tf.keras.utils.set_random_seed seeds NumPy too)


@dataclass
class EnsembleConfig:
    """Ensembles of seeds (ranking_exp/ensemble.py): train one member per seed, each an ordinary
    run recorded as an MLflow child run of one parent run, then export one SavedModel whose score
    is the plain mean of the members' raw scores.

    ``seeds``: null (no ensemble, the default); an int N: the seeds ``seed`` .. ``seed + N - 1``
    (so the first member is the plain run); or a list of seeds (``[1, 7, 42]``). At least 2 members.
    """

    seeds: Any = None
    # Log each member's model on its child run too (the ensemble model goes on the parent either way).
    log_member_models: bool = True

    def __post_init__(self):
        seeds = self.seeds
        if seeds is None:
            return
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            _check(seeds >= 2, "ensemble.seeds", f"an ensemble needs at least 2 members (got {seeds})")
            return
        _check(isinstance(seeds, (list, tuple)), "ensemble.seeds",
               f"must be null, a number of members N >= 2, or a list of seeds (got {seeds!r})")
        for s in seeds:
            _check(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= _MAX_SEED, "ensemble.seeds",
                   f"seeds must be whole numbers in [0, {_MAX_SEED}] (got {s!r})")
        _check(len(seeds) >= 2, "ensemble.seeds", f"an ensemble needs at least 2 seeds (got {list(seeds)})")
        twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
        _check(not twice, "ensemble.seeds", f"listed twice: {', '.join(map(str, twice))}")

    @property
    def enabled(self) -> bool:
        return self.seeds is not None

    def member_seeds(self, seed: int) -> list[int]:
        """The members' seeds: ``seed .. seed + N - 1`` for an int N, else the list."""
        if self.seeds is None:
            return []
        if isinstance(self.seeds, int):
            return list(range(seed, seed + self.seeds))
        return [int(s) for s in self.seeds]


@dataclass
class RunConfig:
    """The composed run. Group nodes are typed by their option's schema."""

    dataset: Any = MISSING
    scorer: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    strategy: Any = MISSING
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    seed: int = 42
    output_dir: str = "${hydra:runtime.output_dir}"

    def __post_init__(self):
        if self.train.refit:
            for name in ("early_stopping", "reduce_lr"):
                _check(not getattr(self.callbacks, name).enabled, f"callbacks.{name}",
                       "watches the validation set, which train.splits=[train, vali] trains on: disable it")
            self.export.best = False  # no epoch to choose by validation: the last one is the model
        if self.callbacks.reduce_lr.enabled and self.optimizer.schedule.kind != "constant":
            raise ConfigError("callbacks.reduce_lr: cannot be combined with optimizer.schedule "
                              f"'{self.optimizer.schedule.kind}' (both set the learning rate)")
        if isinstance(self.scorer, LightGBMScorerConfig):
            _check(self.strategy.kind == "none", "strategy",
                   f"scorer=lightgbm trains outside TensorFlow: use strategy=none (got {self.strategy.kind})")
            _check(self.metrics.monitor.startswith("ndcg_"), "metrics.monitor",
                   f"scorer=lightgbm stops early on LightGBM's ndcg@k: monitor an ndcg_k metric (got {self.metrics.monitor!r})")
            _check(self.model.builder is None, "model.builder", "does not apply to scorer=lightgbm")
            _check(self.train.document_dropout == 0, "train.document_dropout",
                   "does not apply to scorer=lightgbm (it trains on whole lists outside TensorFlow)")
        if self.train.document_dropout > 0:
            _check(self.strategy.shard_policy != "file", "strategy.shard_policy",
                   "file sharding cannot split train.document_dropout's random draws: use auto or data")
        if self.ensemble.enabled:
            _check(not isinstance(self.scorer, LightGBMScorerConfig), "ensemble.seeds",
                   "ensembles are of neural scorers; scorer=lightgbm is not supported (set ensemble.seeds=null)")
            _check(self.strategy.kind in ("none", "mirrored"), "ensemble.seeds",
                   f"members train one after another in this process: use strategy=none or mirrored "
                   f"(got {self.strategy.kind})")
            if isinstance(self.ensemble.seeds, int):
                last = self.seed + self.ensemble.seeds - 1
                _check(0 <= self.seed and last <= _MAX_SEED, "ensemble.seeds",
                       f"the seeds seed..seed+N-1 must lie in [0, {_MAX_SEED}] (seed={self.seed}, last {last})")


GROUPS = ("dataset", "scorer", "loss", "optimizer", "strategy")


def register_configs() -> None:
    """Stores every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, options in REGISTRY.items():
        for name, cls in options.items():
            cs.store(group=f"schema/{group}", name=name, node=cls)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Resolves and validates a composed config into :class:`RunConfig` objects.

    Raises ConfigError with the offending key; this runs before TensorFlow is imported.
    """
    try:
        run = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(one_line_omegaconf_error(e)) from None
    except (ValueError, TypeError) as e:  # __post_init__ of nested objects built by OmegaConf
        raise ConfigError(str(e).splitlines()[0]) from None
    for group in GROUPS:
        node = getattr(run, group)
        _check(dataclasses.is_dataclass(node), group, "missing: choose an option of this group")
        _check(_GROUP_OF.get(type(node)) == group, group, f"{type(node).__name__} is not a {group} option")
    return run


def one_line_omegaconf_error(e: OmegaConfBaseException) -> str:
    """``full.key: problem`` from an OmegaConf error (which spans several lines)."""
    from omegaconf.errors import MissingMandatoryValue

    msg = str(e).splitlines()[0].strip() if str(e) else type(e).__name__
    key = getattr(e, "full_key", None)
    if isinstance(e, MissingMandatoryValue) and key:
        return f"{key}: required but not set (add {key}=... to the command line)"
    return f"{key}: {msg}" if key else msg


def expand_path(path: str) -> str:
    """Absolute path; an OmegaConf interpolation left unresolved (a config dataclass built in
    Python keeps its default ``DEFAULT_CACHE_DIR`` as text) is resolved first."""
    if "${" in path:
        path = OmegaConf.create({"path": path}).path
    return os.path.abspath(os.path.expanduser(path))
