"""Config composition and validation: every option composes; mistakes fail in one line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from ranking_exp.cli import preflight
from ranking_exp.config import GROUPS, REGISTRY, register_configs, to_run_config
from ranking_exp.errors import ConfigError
from tests.helpers import REPO, run_cli

CONF = REPO / "conf"
REQUIRED = {  # options that need a value the user must give
    "dataset/letor": ["dataset.path=/data/fold"],
    "dataset/elwc": ["dataset.train=/data/train-*.tfrecord", "dataset.feature_spec=/data/feature_spec.json"],
    "scorer/custom": ["scorer.target=mypkg.MyScorer"],
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def all_options():
    return [(g, o) for g in GROUPS for o in options(g)]


def test_every_yaml_option_has_a_registered_schema_and_back():
    for group in GROUPS:
        assert set(options(group)) == set(REGISTRY[group]), group


@pytest.mark.parametrize("group,option", all_options())
def test_every_option_composes_into_its_validated_class(group, option, monkeypatch):
    register_configs()
    if (group, option) == ("strategy", "parameter_server"):  # its cluster comes from TF_CONFIG
        monkeypatch.setenv("TF_CONFIG", json.dumps({
            "cluster": {"chief": ["127.0.0.1:2220"], "worker": ["127.0.0.1:2221"], "ps": ["127.0.0.1:2222"]},
            "task": {"type": "chief", "index": 0}}))
    overrides = [f"{group}={option}", *REQUIRED.get(f"{group}/{option}", [])]
    with initialize_config_module("ranking_exp.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.output_dir = "/tmp/out"
    run = to_run_config(cfg)
    node = getattr(run, group)
    assert isinstance(node, REGISTRY[group][option])
    if group == "loss":
        assert node.key == f"{option}_loss"


@pytest.mark.parametrize("overrides,message", [
    (["scorer=foo"], "scorer=foo: no such option (choose from custom, dasalc, dnn, gam, lightgbm, linear)"),
    (["optimizer.learning_rate=0"], "optimizer.learning_rate: must be > 0"),
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate: must be > 0"),
    (["train.epochs=0"], "train.epochs: must be > 0"),
    (["train.epochs=-3"], "train.epochs: must be > 0"),
    (["scorer.hiden_layer_dims=[3]"], "scorer.hiden_layer_dims: Key 'hiden_layer_dims' not in 'DNNScorerConfig'"),
    (["train.epochs=ten"], "train.epochs: Value 'ten' of type 'str' could not be converted to Integer"),
    (["scorer.dropout=1.5"], "scorer.dropout: must be in [0, 1)"),
    (["loss=approx_ndcg", "loss.lambda_weight=ndcg"], "loss.lambda_weight: approx_ndcg_loss takes no lambda weight"),
    (["loss.label_gain=exp3"], "loss.label_gain: 'exp3' not in ('exp2',)"),
    (["loss=list_mle", "loss.label_gain=exp2"], "loss.label_gain: only softmax_loss takes one, not list_mle_loss"),
    (["loss.lambda_weight=ndcg", "loss.label_gain=exp2"], "loss.label_gain: set either it or loss.lambda_weight"),
    (["loss.list_weights=even"], "loss.list_weights: 'even' not in ('label_sum', 'equal')"),
    (["loss=approx_ndcg", "loss.list_weights=equal"], "loss.list_weights: only softmax_loss takes them, not approx_ndcg_loss"),
    (["dataset=letor"], "dataset.path: required but not set"),
    (["metrics.monitor=ndcg_7"], "metrics.monitor: 'ndcg_7' not among"),
    (["strategy=parameter_server"], "strategy: strategy=parameter_server needs its cluster in TF_CONFIG"),
    (["strategy=parameter_server", "strategy.variable_partitioner.kind=hash"],
     "strategy.variable_partitioner.kind: 'hash' not in none, fixed_shards, min_size_max_shards, max_size"),
    (["strategy=parameter_server", "strategy.variable_partitioner.num_shards=0"],
     "strategy.variable_partitioner.num_shards: must be > 0"),
    (["strategy=mirrored", "strategy.variable_partitioner.kind=fixed_shards"],
     "strategy.variable_partitioner: only for strategy=parameter_server (got mirrored)"),
    (["callbacks.reduce_lr.enabled=true", "optimizer.schedule.kind=cosine"], "callbacks.reduce_lr: cannot be combined"),
    (["optimizer.schedule.decay_steps=soon"], "optimizer.schedule.decay_steps: must be auto or a whole number > 0"),
    (["preprocess.default.quantile=gauss"], "preprocess.default.quantile: 'gauss' not in (null, 'uniform', 'normal')"),
    (["preprocess.default.quantile=normal", "preprocess.default.standardize=true"],
     "preprocess.default.quantile: cannot be combined with standardize: true"),
    (["preprocess.features=[{name: bm25, quantile: uniform, quantiles: 1}]"],
     "preprocess.features[0].quantiles: must be >= 2 (got 1)"),
    (["train.splits=[vali]"], "train.splits: must be [train] or [train, vali] (got ['vali'])"),
    (["train.splits=[train,test]"], "train.splits: must be [train] or [train, vali]"),
    (["train.splits=[train,vali]", "callbacks.early_stopping.enabled=true"],
     "callbacks.early_stopping: watches the validation set, which train.splits=[train, vali] trains on"),
])
def test_bad_config_is_one_line_naming_the_key(overrides, message):
    register_configs()
    with pytest.raises(ConfigError) as e:
        preflight("config", overrides, multirun=False)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_multirun_preflight_checks_every_swept_value():
    register_configs()
    preflight("config", ["scorer=dnn,gam,linear", "loss=softmax,list_mle"], multirun=True)
    with pytest.raises(ConfigError, match="scorer=fancy: no such option"):
        preflight("config", ["scorer=dnn,fancy"], multirun=True)


@pytest.mark.parametrize("args,message", [
    (["scorer=foo"], "error: scorer=foo: no such option (choose from custom, dasalc, dnn, gam, lightgbm, linear)"),
    (["optimizer.learning_rate=0"], "error: optimizer.learning_rate: must be > 0 (got 0.0)"),
    (["train.epochs=0"], "error: train.epochs: must be > 0 (got 0)"),
    (["-m", "loss=softmax,nope"], "error: loss=nope: no such option"),
    (["-m", "--cfg", "job", "+sweep=dnn_softmax"], "error: --multirun and --cfg: give only one of"),
])
def test_cli_config_errors_exit_2_with_one_line_and_write_nothing(tmp_path: Path, args, message):
    r = run_cli(args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == message or r.stderr.strip().startswith(message)
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs_compose_on_any_fold(tmp_path, name):
    """``+experiment=NAME dataset.path=<fold>`` is the documented way to train a named experiment."""
    from tests.helpers import compose_run

    run, _ = compose_run(tmp_path, [f"+experiment={name}", "dataset.path=/data/MQ2008/Fold3"])
    assert run.dataset.path == "/data/MQ2008/Fold3"
    if name == "mq2008_best":
        assert (run.scorer.kind, run.loss.key, run.train.batch_size) == ("dasalc", "softmax_loss", 16)
        assert run.ensemble.seeds == 18  # stop 25: 18 members beat the mean of their two 9-member halves on vali
        assert run.scorer.num_attention_layers == 1
        # The cosine decays over the whole run (12 epochs of ceil(471 MQ2008 training lists / 16) =
        # 360 steps; 480 when refit on train + vali's 628 lists).
        assert (run.optimizer.schedule.kind, run.optimizer.schedule.decay_steps) == ("cosine", "auto")


def test_mq2008_best_is_the_configuration_its_last_screen_judged(tmp_path):
    """``mq2008_best`` must train what its last screen adopted (stop 28:
    ``sweeps/mq2008_numeric_embedding_small.yaml``'s trial 0, stop 22's confirmed configuration plus the
    periodic embedding with sigma 0.01): the model, loss, optimizer and schedule, batch and epochs, so
    that the README's test estimate belongs to the configuration chosen on vali. Only how the sweep ran
    differs (threads, seeds, the epoch it exported, folds), and the ensemble's size, chosen after stop 22
    (stop 25: 18 seeds by benchmarks/ensemble_size.py on vali, where the sweeps judged 9)."""
    from omegaconf import OmegaConf

    from tests.helpers import compose_run

    sweep = OmegaConf.load(REPO / "sweeps" / "mq2008_numeric_embedding_small.yaml")
    candidate = [f"{k}={v}" for k, v in sweep.hydra.sweeper.enqueue_trials[0].items()]
    assert "scorer.numeric_embedding.sigma=0.01" in candidate
    judged, _ = compose_run(tmp_path / "sweep", ["+sweep=mq2008_numeric_embedding_small", *candidate])
    best, _ = compose_run(tmp_path / "best", ["+experiment=mq2008_best"])
    for part in ("scorer", "loss", "optimizer"):
        assert getattr(best, part) == getattr(judged, part), part
    assert (best.train.batch_size, best.train.epochs) == (judged.train.batch_size, judged.train.epochs)
    # and, but for the embedding, what stop 22's confirmation judged
    confirm = OmegaConf.load(REPO / "sweeps" / "mq2008_dasalc_confirm.yaml")
    confirmed, _ = compose_run(tmp_path / "confirm", ["+sweep=mq2008_dasalc_confirm", *(
        f"{k}={v}" for k, v in confirm.hydra.sweeper.enqueue_trials[-1].items())])
    assert confirmed.scorer.numeric_embedding.kind == "none"
    assert dataclasses.replace(best.scorer, numeric_embedding=confirmed.scorer.numeric_embedding) == confirmed.scorer
    assert (best.ensemble.seeds, judged.ensemble.seeds) == (18, 9)
