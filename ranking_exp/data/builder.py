"""TF Ranking DatasetBuilder over PreparedData: finite epochs, seeded shuffling, test split.

TF Ranking's builders repeat data forever and read with sloppy (non-deterministic) ordering;
ours passes over the data once per Keras epoch, in a seeded order, so ``train.epochs`` means
passes over the data and runs repeat.
"""
from __future__ import annotations

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

    def _auto_shard(self, dataset: tf.data.Dataset, num_files: int) -> tf.data.Dataset:
        """Multi-worker input: each worker reads its own shards (FILE) when every worker gets at
        least one, else every worker reads all and keeps its part of the batches (DATA)."""
        if self._num_workers <= 1:
            return dataset
        policy = self._shard_policy
        if policy == "auto":
            policy = "file" if num_files >= self._num_workers else "data"
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.FILE if policy == "file" else tf.data.experimental.AutoShardPolicy.DATA)
        return dataset.with_options(options)

    def _build_dataset(self, file_pattern, batch_size, list_size=None, randomize_input=True, num_epochs=None):
        del num_epochs  # always one pass: Keras' epochs count passes over the data
        dataset = tfr.data.build_ranking_dataset(
            file_pattern=list(file_pattern),
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
        return self._auto_shard(dataset, len(list(file_pattern)))

    def build_split_dataset(self, split: str) -> tf.data.Dataset | None:
        """Whole lists of ``split`` in file order (for evaluation), or None if absent."""
        info = self.data.split(split)
        if info is None or not info.files:
            return None
        return self._build_dataset(info.files, self._train.eval_batch_size, list_size=None, randomize_input=False)

    def build_signatures(self, model: tf.keras.Model):
        return RankingSignatures(model, self.spec)()
