"""The model builder: FeatureSpec -> input creator -> preprocessor -> scorer (TF Ranking's
ModelBuilder), or a user's whole builder named by import path."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import tensorflow_ranking as tfr

from ranking_exp.config import RunConfig
from ranking_exp.data.spec import FeatureSpec
from ranking_exp.errors import ConfigError
from ranking_exp.model.packing import pack
from ranking_exp.model.preprocess import build_preprocessor
from ranking_exp.model.scorers import build_scorer
from ranking_exp.plugins import load_callable


def build_model_builder(run: RunConfig, spec: FeatureSpec,
                        train_batches: Callable[[], Iterable]) -> tfr.keras.model.AbstractModelBuilder:
    if run.model.builder is not None:
        builder = load_callable(run.model.builder, "model.builder")(feature_spec=spec, **run.model.builder_kwargs)
        if not isinstance(builder, tfr.keras.model.AbstractModelBuilder):
            raise ConfigError(f"model.builder: {run.model.builder} returned {type(builder).__name__}, "
                              "not a tfr.keras.model.AbstractModelBuilder")
        return builder
    scorer = build_scorer(run.scorer)
    return tfr.keras.model.ModelBuilder(
        input_creator=tfr.keras.model.FeatureSpecInputCreator(
            spec.context_parsing_spec(), spec.example_parsing_spec()),
        preprocessor=build_preprocessor(run.preprocess, spec, train_batches),
        scorer=pack(scorer) if run.model.pack_lists else scorer,
        mask_feature_name=spec.mask_name,
        name="ranker",
    )
