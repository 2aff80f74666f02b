"""Refitting a chosen configuration on train + vali (``train.splits=[train, vali]``): the training
data grows by the validation lists, nothing is chosen on validation any more (the neural run exports
its last epoch; LightGBM keeps the number of trees early stopping chose on vali), the rest is alike."""
from __future__ import annotations

import math
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from ranking_exp.data.sources import prepare
from tests.helpers import TINY, compose_run, tiny


def test_refit_trains_on_every_train_and_vali_list_once_per_epoch(tmp_path):
    from ranking_exp.data.builder import RankingDatasetBuilder

    run, _ = compose_run(tmp_path, tiny(["train.splits=[train,vali]", "train.batch_size=16"]))
    assert run.train.refit and run.export.best is False  # no epoch to choose by validation
    data = prepare(run.dataset)
    both = data.training_on(run.train.splits)
    assert both.split("train").num_lists == data.split("train").num_lists + data.split("vali").num_lists == 160
    assert both.split("train").files == data.split("train").files + data.split("vali").files
    assert both.split("vali") == data.split("vali") and both.split("test") == data.split("test")
    assert data.training_on(["train"]) is data

    builder = RankingDatasetBuilder(both, run.train, run.seed)
    assert builder.num_batches("train") == math.ceil(160 / 16)
    lists = sum(int(features[data.spec.mask_name].shape[0]) for features, _ in builder.build_train_dataset())
    assert lists == 160


def test_a_refit_neural_run_exports_its_last_epoch_only(tmp_path):
    from ranking_exp.experiment import run_training

    run, cfg = compose_run(tmp_path, tiny(["train.splits=[train,vali]"]))
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="refit")
    assert set(result.exports) == {"last"}
    assert not (Path(run.output_dir) / "export" / "best_model_by_metric").exists()
    assert result.metrics["test_ndcg_10"] > 0


def _lightgbm(tmp_path, overrides):
    from ranking_exp.experiment import run_training

    run, cfg = compose_run(tmp_path, [*TINY, "scorer=lightgbm", "train.threads=1", "tracking.log_model=false",
                                      *overrides])
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="lgbm")
    return result, lgb.Booster(model_file=str(Path(result.exports["best"]) / "model.txt"))


def test_lightgbm_refit_keeps_early_stoppings_tree_count_on_train_and_vali(tmp_path):
    from ranking_exp.gbdt import load_split

    plain, plain_model = _lightgbm(tmp_path / "plain", [])
    refit, refit_model = _lightgbm(tmp_path / "refit", ["train.splits=[train,vali]"])
    trees = int(plain.metrics["best_iteration"])
    assert refit.metrics["best_iteration"] == trees and refit_model.current_iteration() == trees
    # The same number of trees grown on more data: a different model, which fits vali better.
    run, _ = compose_run(tmp_path / "plain", TINY)
    vali = load_split(prepare(run.dataset), "vali")
    assert not np.allclose(plain_model.predict(vali.x), refit_model.predict(vali.x))
    assert refit.metrics["best_val_ndcg_10"] > plain.metrics["best_val_ndcg_10"]
