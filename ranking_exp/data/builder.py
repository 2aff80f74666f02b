"""TF Ranking DatasetBuilder over PreparedData: finite epochs, seeded shuffling, parsed once.

TF Ranking's builders repeat data forever and read with sloppy (non-deterministic) ordering;
ours passes over the data once per Keras epoch, in a seeded order, so ``train.epochs`` means
passes over the data and runs repeat.

TF Ranking parses every batch of serialized ELWC again in every epoch (on MSLR-sized lists that
is ~40% of a 2-core machine's time). Ours parses each list once, with TF Ranking's own parser,
keeps the parsed lists (``train.cache``), and per epoch only shuffles them and pads each batch
to its longest list (or to ``train.list_size``). Validation and test lists, read in a fixed
order, are cached as parsed batches.
"""
from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_ranking as tfr

from ranking_exp.config import TrainConfig
from ranking_exp.data.prepared import PreparedData
from ranking_exp.errors import DataError
from ranking_exp.model.signatures import RankingSignatures


class RankingDatasetBuilder(tfr.keras.pipeline.SimpleDatasetBuilder):
    def __init__(self, data: PreparedData, train: TrainConfig, seed: int, num_workers: int = 1,
                 shard_policy: str = "auto"):
        spec = data.spec
        for split in ("train", "vali"):
            if data.split(split) is None or not data.split(split).files:
                raise DataError(f"{data.root}: the data set has no {split} split")
        hparams = tfr.keras.pipeline.DatasetHparams(
            train_input_pattern=data.split("train").files,
            valid_input_pattern=data.split("vali").files,
            train_batch_size=train.batch_size,
            valid_batch_size=train.eval_batch_size,
            list_size=train.list_size,
            valid_list_size=None,  # evaluate on whole lists
        )
        super().__init__(spec.context_parsing_spec(), spec.example_parsing_spec(), spec.mask_name,
                         spec.label_parsing_spec(), hparams)
        self.data = data
        self.spec = spec
        self._train = train
        self._seed = seed
        self._num_workers = num_workers
        self._shard_policy = shard_policy
        # Lists per split where known (metadata, or counted by the pipeline): a single process's
        # datasets then carry their number of batches, which Keras needs for steps_per_execution.
        self.num_lists: dict[str, int] = {s: data.split(s).num_lists for s in ("train", "vali", "test")
                                          if data.split(s) is not None and data.split(s).num_lists is not None}

    def num_batches(self, split: str) -> int | None:
        """Batches in one pass over ``split`` (None: its lists are not counted)."""
        n = self.num_lists.get(split)
        if n is None:
            return None
        return math.ceil(n / (self._train.batch_size if split == "train" else self._train.eval_batch_size))

    def _with_cardinality(self, dataset: tf.data.Dataset, files: list[str], batch_size: int) -> tf.data.Dataset:
        """``dataset`` declared to hold its number of batches, when its split's lists are counted
        (one process only: sharding changes the count)."""
        if self._num_workers > 1:
            return dataset
        for split, n in self.num_lists.items():
            if list(self.data.split(split).files) == list(files):
                return dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
        return dataset

    def _auto_shard(self, dataset: tf.data.Dataset, num_files: int) -> tf.data.Dataset:
        """Multi-worker input: each worker reads its own shards (FILE) when every worker gets at
        least one, else every worker reads all and keeps its part of the batches (DATA)."""
        if self._num_workers <= 1:
            return dataset
        policy = self._shard_policy
        if policy == "auto":  # document dropout's draws are a second source, which FILE can't shard
            policy = "file" if num_files >= self._num_workers and not self._train.document_dropout else "data"
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.FILE if policy == "file" else tf.data.experimental.AutoShardPolicy.DATA)
        return dataset.with_options(options)

    def _padding_values(self) -> dict:
        """What padded slots hold, as Python scalars: each feature's default, no mask, the
        padding label (< 0)."""
        def default(spec):
            value = getattr(spec, "default_value", None)
            if value is None:
                return b"" if spec.dtype == tf.string else 0
            return np.asarray(value).reshape(-1)[0].item()

        specs = {**self._example_spec, **self._context_spec}
        return {**{name: default(spec) for name, spec in specs.items()}, self._mask_feature_name: False}

    @property
    def _context_spec(self) -> dict:
        return {**self._context_feature_spec, **self._training_only_context_spec}

    @property
    def _example_spec(self) -> dict:
        return {**self._example_feature_spec, **self._training_only_example_spec}

    def _parsed_lists(self, files: list[str]) -> tf.data.Dataset:
        """One element per list, parsed by TF Ranking's parser: context ``[d]``, example
        features ``[L, d]``, mask ``[L]``, in file order."""
        def parse(serialized):
            features = tfr.data.parse_from_example_list(
                tf.expand_dims(serialized, 0), list_size=None, context_feature_spec=self._context_spec,
                example_feature_spec=self._example_spec, mask_feature_name=self._mask_feature_name)
            return {name: tf.squeeze(t, 0) for name, t in features.items()}

        dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(tf.data.TFRecordDataset)
        return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _cached_training_dataset(self, files: list[str], batch_size: int, list_size: int | None) -> tf.data.Dataset:
        """Parsed once and kept in memory; each epoch reshuffles the lists and pads every batch to
        its longest list, or cuts and pads every list to ``list_size`` (TF Ranking's rule: a
        list's first ``list_size`` documents).

        Features of the same kind (context or example, dtype, shape and padding value: e.g. the
        46 float features of MQ2008) travel stacked in one tensor from the cache through the
        shuffle and the padding, and are split back into their names per batch: tf.data's cost
        per list grows with its number of tensors, and every epoch starts by refilling the
        shuffle buffer. The shuffle draws the same order whatever the elements hold."""
        context = set(self._context_spec)
        parsed = self._parsed_lists(files)
        groups = _stack_groups(parsed.element_spec, context, self._padding_values())

        def stack(features):
            return [features[names[0]] if len(names) == 1 else tf.stack([features[n] for n in names], axis=-1)
                    for names, _, _ in groups]

        def unstack(*stacked):
            features = {}
            for (names, _, _), t in zip(groups, stacked):
                features.update(zip(names, [t] if len(names) == 1 else tf.unstack(t, num=len(names), axis=-1)))
            return self._features_and_labels(features)

        dataset = parsed.map(lambda f: tuple(stack(f))).cache()
        dataset = dataset.shuffle(self._train.shuffle_buffer, seed=self._seed, reshuffle_each_iteration=True)
        if list_size is not None:
            dataset = dataset.map(lambda *ts: tuple(t if in_context else t[:list_size]
                                                    for t, (_, in_context, _) in zip(ts, groups)))
        shapes = tuple(spec.shape if in_context else tf.TensorShape([list_size]).concatenate(spec.shape[1:])
                       for spec, (_, in_context, _) in zip(dataset.element_spec, groups))
        dataset = dataset.padded_batch(batch_size, padded_shapes=shapes, padding_values=tuple(
            tf.constant(value, dtype=spec.dtype) for spec, (_, _, value) in zip(dataset.element_spec, groups)))
        dataset = dataset.map(unstack, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = self._with_cardinality(self._drop_documents(dataset), files, batch_size)
        return self._auto_shard(dataset.prefetch(tf.data.AUTOTUNE), len(files))

    def _drop_documents(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """``train.document_dropout``: each batch's documents left out with that probability, by
        draws that are seeded and new every epoch (``Dataset.random`` zipped alongside). A
        left-out document becomes padding: mask off, label -1, example features at their
        padding values; a list that would lose every document keeps them all."""
        rate = self._train.document_dropout
        if not rate:
            return dataset
        padding = self._padding_values()
        example = set(self._example_spec)
        mask_name = self._mask_feature_name

        def drop(batch, draw):
            features, labels = batch
            mask = features[mask_name]
            keep = tf.random.stateless_uniform(tf.shape(mask), seed=tf.stack([draw, tf.constant(0, tf.int64)])) >= rate
            keep = keep | ~tf.reduce_any(keep & mask, axis=1, keepdims=True)
            out = dict(features)
            out[mask_name] = mask & keep
            for name, t in features.items():
                if name in example:
                    k = keep[(...,) + (tf.newaxis,) * (t.shape.rank - 2)]  # [B, L, 1..] against [B, L, d..]
                    out[name] = tf.where(k, t, tf.constant(padding[name], dtype=t.dtype))
            return out, tf.where(keep, labels, tf.constant(-1, dtype=labels.dtype))

        draws = tf.data.Dataset.random(seed=self._seed, rerandomize_each_iteration=True)
        return tf.data.Dataset.zip((dataset, draws)).map(drop, num_parallel_calls=tf.data.AUTOTUNE)

    def _build_dataset(self, file_pattern, batch_size, list_size=None, randomize_input=True, num_epochs=None):
        del num_epochs  # always one pass: Keras' epochs count passes over the data
        files = list(file_pattern)
        cache = self._train.cache == "memory" or (self._train.cache == "auto" and self._fits_in_memory())
        if randomize_input and cache:
            return self._cached_training_dataset(files, batch_size, list_size)
        dataset = tfr.data.build_ranking_dataset(
            file_pattern=files,
            from_file_list=True,
            data_format=tfr.data.ELWC,
            batch_size=batch_size,
            list_size=list_size,
            context_feature_spec={**self._context_feature_spec, **self._training_only_context_spec},
            example_feature_spec={**self._example_feature_spec, **self._training_only_example_spec},
            mask_feature_name=self._mask_feature_name,
            num_epochs=1,
            shuffle=randomize_input,
            shuffle_buffer_size=self._train.shuffle_buffer,
            shuffle_seed=self._seed,
            sloppy_ordering=not self._train.deterministic,
            drop_final_batch=False,
            seed=self._seed,
        )
        dataset = dataset.map(self._features_and_labels, num_parallel_calls=tf.data.AUTOTUNE)
        if randomize_input:
            dataset = self._drop_documents(dataset)
        dataset = self._with_cardinality(dataset, files, batch_size)
        if cache and not randomize_input:  # fixed order: the parsed batches themselves
            dataset = dataset.cache()
        return self._auto_shard(dataset.prefetch(tf.data.AUTOTUNE), len(files))

    def _fits_in_memory(self) -> bool:
        """``train.cache=auto``: cache when every split's parsed values take under a quarter of
        this machine's memory (unknown counts: don't)."""
        docs = [self.data.split(s).num_docs for s in ("train", "vali", "test") if self.data.split(s) is not None]
        if any(d is None for d in docs):
            return False
        values = len(self.spec.example_names) + len(self.spec.context_names) + 2  # + label, mask
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return False
        return sum(docs) * values * 4 < memory / 4

    def build_split_dataset(self, split: str) -> tf.data.Dataset | None:
        """Whole lists of ``split`` in file order (for evaluation), or None if absent."""
        info = self.data.split(split)
        if info is None or not info.files:
            return None
        return self._build_dataset(info.files, self._train.eval_batch_size, list_size=None, randomize_input=False)

    def build_signatures(self, model: tf.keras.Model, serving_default: str = "regress"):
        """``serving_default``: ``regress`` (one tf.Example per document: right for univariate
        scorers) or ``predict`` (whole ExampleListWithContext lists: listwise scorers)."""
        return RankingSignatures(model, self.spec)(serving_default=serving_default)


def _stack_groups(element_spec: dict, context: set, padding: dict) -> list[tuple[list[str], bool, object]]:
    """``(names, in_context, padding value)`` per stack of a parsed list's tensors: those alike
    in where they live (context or example), dtype, shape and padding value, in name order."""
    groups: dict[tuple, list[str]] = {}
    for name in sorted(element_spec):
        spec = element_spec[name]
        key = (name in context, spec.dtype, tuple(spec.shape.as_list()), repr(padding[name]))
        groups.setdefault(key, []).append(name)
    return [(names, key[0], padding[names[0]]) for key, names in groups.items()]
