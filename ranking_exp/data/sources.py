"""The ``dataset`` group: each option's config class maps to the function that prepares it."""
from __future__ import annotations

from pathlib import Path

from ranking_exp.config import ElwcDatasetConfig, LetorDatasetConfig, SyntheticDatasetConfig, expand_path
from ranking_exp.data.prepared import PreparedData


def _synthetic(c: SyntheticDatasetConfig) -> PreparedData:
    from ranking_exp.data.synthetic import make_synthetic

    return make_synthetic(Path(expand_path(c.cache_dir)), num_train=c.num_train, num_vali=c.num_vali,
                          num_test=c.num_test, min_docs=c.min_docs, max_docs=c.max_docs, seed=c.seed,
                          num_shards=c.num_shards)


def _letor(c: LetorDatasetConfig) -> PreparedData:
    from ranking_exp.data.elwc import convert_letor

    return convert_letor(Path(expand_path(c.path)), Path(expand_path(c.cache_dir)), num_shards=c.num_shards,
                         progress=c.progress)


def _elwc(c: ElwcDatasetConfig) -> PreparedData:
    from ranking_exp.data.elwc import open_elwc

    return open_elwc(expand_path(c.train), c.vali and expand_path(c.vali), c.test and expand_path(c.test),
                     expand_path(c.feature_spec))


PREPARERS = {SyntheticDatasetConfig: _synthetic, LetorDatasetConfig: _letor, ElwcDatasetConfig: _elwc}


def prepare(cfg) -> PreparedData:
    return PREPARERS[type(cfg)](cfg)
