"""Optuna sweeps through the real command: sqlite studies read back, pruning, resume after a
kill, failing trials, MLflow parent/child runs and the registered model, bad sweep settings."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ranking_exp.shared_db import open_shared
from tests.helpers import run_cli

pytestmark = pytest.mark.slow
TINY_SWEEP = ["dataset.num_train=120", "dataset.num_vali=40", "dataset.num_test=40", "dataset.max_docs=20",
              "train.epochs=2", "train.verbose=0", "tracking.log_model=false", "export.best=false"]


def write_sweep(tmp_path: Path, name: str, params: dict[str, str], enqueue: list[dict] | None = None) -> str:
    """A sweep file in a search-path folder of the test's own; returns the searchpath override."""
    folder = tmp_path / "extra_conf" / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# @package _global_", "defaults:", "  - override /hydra/sweeper: ranking_optuna", "hydra:",
             "  sweeper:", f"    study_name: {name}", "    params:"]
    lines += [f"      {k}: {v}" for k, v in params.items()]
    if enqueue is not None:
        lines.append("    enqueue_trials:")
        lines += ["      " + line for line in yaml.safe_dump(enqueue, default_flow_style=None).splitlines()]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    return f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]"


def sweep_args(tmp_path: Path, params: dict[str, str], *extra: str, enqueue: list[dict] | None = None) -> list[str]:
    return ["-m", "+sweep=tiny", write_sweep(tmp_path, "tiny", params, enqueue), *TINY_SWEEP,
            "hydra.sweep.dir=multirun/sweep", *extra]


def sweep(tmp_path: Path, params: dict[str, str], *extra: str, timeout: int = 900,
          enqueue: list[dict] | None = None) -> subprocess.CompletedProcess:
    return run_cli(sweep_args(tmp_path, params, *extra, enqueue=enqueue), cwd=tmp_path, timeout=timeout)


def load(tmp_path: Path, name: str = "tiny") -> optuna.Study:
    # Opened while the sweep may still be creating the schema (the kill-and-resume test polls it), so
    # through the same back-off the sweeper's workers use.
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_shared(lambda: optuna.storages.RDBStorage(url), "test reader", url=url)
    return optuna.load_study(study_name=name, storage=storage)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


SMALL_SPACE = {"scorer.hidden_layer_dims": "choice([8],[16,8])", "optimizer.learning_rate": "tag(log, interval(1e-3, 5e-2))"}


def test_four_trials_complete_and_everything_reads_back(tmp_path):
    r = sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.kind=none",
              "tracking.log_model=true")
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(tmp_path)
    assert states(study) == ["COMPLETE"] * 4
    assert {"scorer.hidden_layer_dims", "optimizer.learning_rate"} == set(study.best_trial.params)
    results = yaml.safe_load((tmp_path / "multirun/sweep/optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["best_params"] == study.best_trial.params
    assert "Best trials of study tiny" in r.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ranking_exp")
    runs = client.search_runs([exp.experiment_id])
    [parent] = [x for x in runs if x.data.tags.get("ranking_exp.role") == "sweep"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(int(c.data.tags["optuna_trial"]) for c in children) == [0, 1, 2, 3]
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.optimizer.learning_rate"] == str(study.best_trial.params["optimizer.learning_rate"])
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots
    best_child = next(c for c in children if int(c.data.tags["optuna_trial"]) == study.best_trial.number)
    version = client.get_model_version_by_alias("tiny", "champion")
    assert version.run_id == best_child.info.run_id
    assert_opens_in_optuna_dashboard(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}", "tiny", 4)


def assert_opens_in_optuna_dashboard(tmp_path: Path, storage: str, study_name: str, n_trials: int) -> None:
    """The real optuna-dashboard server, on the same storage URL, lists the study and its trials."""
    import json
    import urllib.request

    from tests.postgres import free_port

    port = free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    with open(tmp_path / "dashboard.log", "w") as log:
        proc = subprocess.Popen([str(exe), storage, "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    studies = json.load(resp)["study_summaries"]
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("optuna-dashboard did not serve: " + (tmp_path / "dashboard.log").read_text()[-2000:])
                time.sleep(0.5)
        [summary] = [s for s in studies if s["study_name"] == study_name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=30) as resp:
            detail = json.load(resp)
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * n_trials
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_trial_built_to_be_pruned_is_pruned(tmp_path):
    # lr 1e-9 cannot learn; after the good configuration, the median pruner stops it at epoch 1.
    r = sweep(tmp_path, {"optimizer.learning_rate": "choice(0.05, 1e-9)"}, "hydra.sweeper.n_trials=4",
              "hydra.sweeper.sampler.kind=random", "hydra.sweeper.sampler.seed=0", "train.epochs=4",
              "hydra.sweeper.pruner.kind=median", "hydra.sweeper.pruner.n_startup_trials=1",
              "hydra.sweeper.pruner.n_warmup_steps=0", "dataset.num_train=300")
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(tmp_path)
    pruned = [t for t in study.get_trials() if t.state.name == "PRUNED"]
    assert pruned and all(t.params["optimizer.learning_rate"] == 1e-9 for t in pruned)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id],
                              filter_string="tags.state = 'PRUNED'")
    assert len(runs) == len(pruned) and all(x.info.status == "KILLED" for x in runs)
    history = client.get_metric_history(runs[0].info.run_id, "val_ndcg_10")
    assert 1 <= len(history) < 4  # the pruned epoch is recorded, and training stopped there


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # A huge learning rate diverges to NaN (in Keras's unfused batch norm): that trial FAILs, the other completes.
    r = sweep(tmp_path, {"optimizer.learning_rate": "choice(0.01, 1e12)"}, "hydra.sweeper.n_trials=2",
              "hydra.sweeper.sampler.kind=grid", "hydra.sweeper.pruner.kind=none", "hydra.sweeper.max_failure_rate=1.0",
              "optimizer=sgd", "scorer.fast_layers=false")
    assert r.returncode == 0, r.stderr[-3000:]
    by_lr = {t.params["optimizer.learning_rate"]: t for t in load(tmp_path).get_trials()}
    assert by_lr[0.01].state.name == "COMPLETE" and by_lr[1e12].state.name == "FAIL"
    assert "diverged" in by_lr[1e12].user_attrs["error"]


def test_running_again_continues_the_study_up_to_n_trials(tmp_path):
    extra = ["hydra.sweeper.pruner.kind=none"]
    assert sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=2", *extra).returncode == 0
    assert sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=3", *extra).returncode == 0
    assert states(load(tmp_path)) == ["COMPLETE"] * 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id],
                                 filter_string="tags.`ranking_exp.role` = 'sweep'")
    assert len(parents) == 1  # the same parent run continued


def test_enqueued_trials_run_first_once_per_study(tmp_path):
    # The configuration in use, measured by the sweep like its challengers: the sampler draws the keys it leaves out.
    enqueue = [{"scorer.hidden_layer_dims": [16, 8], "optimizer.learning_rate": 0.0123}]
    extra = ["hydra.sweeper.pruner.kind=none", "hydra.sweeper.sampler.seed=0"]
    assert sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=2", *extra, enqueue=enqueue).returncode == 0
    assert sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=3", *extra, enqueue=enqueue).returncode == 0
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params == {"scorer.hidden_layer_dims": "[16,8]", "optimizer.learning_rate": 0.0123}
    assert all(t.params != trials[0].params for t in trials[1:])  # not enqueued again by the resumed sweep
    assert trials[2].params != trials[1].params  # the resumed, seeded sampler did not start its draws over
    job = yaml.safe_load((tmp_path / "multirun/sweep/0/.hydra/config.yaml").read_text())
    assert job["scorer"]["hidden_layer_dims"] == [16, 8] and job["optimizer"]["learning_rate"] == 0.0123
    assert (tmp_path / "multirun/sweep/2/.hydra/config.yaml").exists()  # the resumed job numbered on, not over job 0


def test_a_killed_sweep_resumes_and_retries_the_lost_trial(tmp_path):
    args = [sys.executable, "-m", "ranking_exp", *sweep_args(
        tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.kind=none",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", "train.epochs=30", "dataset.num_train=400")]
    proc = subprocess.Popen(args, cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if (tmp_path / "optuna.db").exists() and "RUNNING" in states(load(tmp_path)):
                break
            time.sleep(1)
        else:
            pytest.fail("no trial started")
        time.sleep(4)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = load(tmp_path).get_trials()
    assert [t.state.name for t in killed] == ["RUNNING"]
    time.sleep(4)  # past the grace period
    r = sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.kind=none",
              "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")
    assert r.returncode == 0, r.stderr[-3000:]
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials].count("COMPLETE") == 2
    assert trials[0].state.name == "FAIL"
    retried = [t for t in trials[1:] if t.params == killed[0].params]
    assert retried and retried[0].state.name == "COMPLETE"  # the lost configuration ran again


@pytest.mark.parametrize("params,override,message", [
    ({"scorer.nope": "interval(0,1)"}, None, "error: hydra.sweeper.params.scorer.nope: no such config key or group"),
    ({"scorer.dropout": "interval(0.5,0.5)"}, None,
     "error: hydra.sweeper.params.scorer.dropout: empty interval interval(0.5,0.5) (low must be < high)"),
    (SMALL_SPACE, "hydra.sweeper.sampler.kind=bogus", "error: hydra.sweeper.sampler.kind: 'bogus' is not a sampler"),
    (SMALL_SPACE, "hydra.sweeper.pruner.kind=nope", "error: hydra.sweeper.pruner.kind: 'nope' is not a pruner"),
    (SMALL_SPACE, "hydra.sweeper.params.nope=3", "error: hydra.sweeper.params.nope:"),
    (SMALL_SPACE, "hydra.sweeper.pruner.percentile=150",
     "error: hydra.sweeper.pruner.percentile: must be in (0, 100] (the share of trials kept at each epoch), got 150.0"),
    (SMALL_SPACE, "train.splits=[train,vali]", "error: train.splits: a sweep chooses on the validation set, so it "
                                                "must not train on it"),
    (SMALL_SPACE, [{"scorer.dropout": 0.1}], "error: hydra.sweeper.enqueue_trials[0].scorer.dropout: not a swept key "
                                             "(swept: optimizer.learning_rate, scorer.hidden_layer_dims)"),
    (SMALL_SPACE, [{"optimizer.learning_rate": 0.5}],
     "error: hydra.sweeper.enqueue_trials[0].optimizer.learning_rate: 0.5 is outside [0.001, 0.05]"),
    (SMALL_SPACE, [{"scorer.hidden_layer_dims": [32]}],
     "error: hydra.sweeper.enqueue_trials[0].scorer.hidden_layer_dims: '[32]' is not one of the choices [8], [16,8]"),
    ({"loss": "choice(approx_ndcg,softmax)", "loss.lambda_weight": "null,ndcg"},
     [{"loss": "approx_ndcg", "loss.lambda_weight": "ndcg"}],
     "error: hydra.sweeper.enqueue_trials[0]: loss.lambda_weight: approx_ndcg_loss takes no lambda weight"),
], ids=["unknown path", "empty interval", "unknown sampler", "unknown pruner", "params typo", "bad percentile",
        "refit sweep", "enqueue unswept key", "enqueue out of range", "enqueue not a choice",
        "enqueued trial invalid as a whole"])
def test_bad_sweep_files_fail_in_one_line_before_training(tmp_path, params, override, message):
    enqueue = override if isinstance(override, list) else None
    override = None if enqueue else override
    r = run_cli(sweep_args(tmp_path, params, *([override] if override else []), enqueue=enqueue), cwd=tmp_path,
                timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("value", [None, True, False, 0, 3, 0.5, 1e-05, "ndcg"])
def test_a_sampled_value_reaches_the_trial_as_itself(value):
    """Swept values go to the trial as override text; Hydra must parse that text back to the same
    value (``null,ndcg`` sweeps a lambda weight on and off: None must not arrive as the string "None")."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.ranking_exp_sweeper.space import override_value, parse_params

    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)
    if value is None:
        assert parse_params({"loss.lambda_weight": "null,ndcg"})["loss.lambda_weight"].choices == (None, "ndcg")


def test_pruner_kinds_build_the_optuna_pruner_they_name():
    from hydra_plugins.ranking_exp_sweeper.config import PrunerConfig
    from hydra_plugins.ranking_exp_sweeper.factories import make_pruner

    median = make_pruner(PrunerConfig(kind="median", n_startup_trials=4, n_warmup_steps=2))
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._percentile, median._n_startup_trials, median._n_warmup_steps) == (50.0, 4, 2)
    percentile = make_pruner(PrunerConfig(kind="percentile", percentile=40.0, n_startup_trials=4, n_warmup_steps=2,
                                          interval_steps=2))
    assert type(percentile) is optuna.pruners.PercentilePruner
    assert (percentile._percentile, percentile._n_startup_trials, percentile._n_warmup_steps,
            percentile._interval_steps) == (40.0, 4, 2, 2)
    patient = make_pruner(PrunerConfig(kind="patient", patience=2, min_delta=0.001, n_startup_trials=3))
    assert isinstance(patient, optuna.pruners.PatientPruner)
    assert (patient._patience, patient._min_delta) == (2, 0.001)
    inner = patient._wrapped_pruner  # the median rule (percentile 50) decides once patience runs out
    assert type(inner) is optuna.pruners.PercentilePruner and (inner._percentile, inner._n_startup_trials) == (50.0, 3)


@pytest.mark.parametrize("field,value,message", [
    ("percentile", 0.0, "hydra.sweeper.pruner.percentile: must be in (0, 100]"),
    ("patience", -1, "hydra.sweeper.pruner.patience: must be an integer >= 0, got -1"),
    ("min_delta", -0.1, "hydra.sweeper.pruner.min_delta: must be >= 0, got -0.1"),
    ("interval_steps", 0, "hydra.sweeper.pruner.interval_steps: must be an integer >= 1, got 0"),
    ("reduction_factor", 1, "hydra.sweeper.pruner.reduction_factor: must be an integer >= 2, got 1"),
])
def test_bad_pruner_values_are_one_line_config_errors(field, value, message):
    from hydra_plugins.ranking_exp_sweeper.config import PrunerConfig
    from ranking_exp.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        PrunerConfig(kind="patient", **{field: value})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_shipped_sweeps_pass_their_checks(tmp_path):
    from hydra import compose, initialize_config_module

    from hydra_plugins.ranking_exp_sweeper.sweeper import RankingOptunaSweeper
    from ranking_exp.config import register_configs

    register_configs()
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))
    assert {"dnn_softmax", "losses", "lightgbm_mq2008", "mq2008_dnn", "mq2008_scorer"} <= set(names)
    for name in names:
        with initialize_config_module("ranking_exp.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
        assert cfg.hydra.sweeper._target_.endswith("RankingOptunaSweeper")
        RankingOptunaSweeper.preflight(cfg.hydra.sweeper, cfg, [])


def test_parallel_trials_through_the_joblib_launcher_with_thread_limits(tmp_path):
    r = sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.kind=none",
              "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "train.threads=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert states(load(tmp_path)) == ["COMPLETE"] * 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id],
                              filter_string="tags.state = 'COMPLETE'")
    assert len(runs) == 2 and all(x.data.params["train.threads"] == "1" for x in runs)


def test_multi_objective_sweep_with_nsgaii(tmp_path):
    r = sweep(tmp_path, SMALL_SPACE, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.kind=nsgaii",
              "hydra.sweeper.objective=[best_val_ndcg_10,best_val_map]", "hydra.sweeper.direction=[maximize,maximize]")
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(tmp_path)
    assert [len(t.values) for t in study.trials] == [2, 2]
    results = yaml.safe_load((tmp_path / "multirun/sweep/optimization_results.yaml").read_text())
    assert results["solutions"] and all(len(s["values"]) == 2 for s in results["solutions"])


def test_plain_multirun_jobs_do_not_affect_each_other(tmp_path):
    """The basic sweeper runs jobs in one process: the same config twice gives the same numbers."""
    r = run_cli(["-m", "seed=5,5", *TINY_SWEEP, "scorer.hidden_layer_dims=[8]"], cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ranking_exp").experiment_id])
    assert len(runs) == 2 and runs[0].info.run_id != runs[1].info.run_id
    assert runs[0].data.metrics["test_ndcg_10"] == runs[1].data.metrics["test_ndcg_10"]
    assert runs[0].data.metrics["best_val_map"] == runs[1].data.metrics["best_val_map"]


def test_qmc_sampler_proposes_the_same_points_whatever_the_results():
    """What makes it the sampler for comparing pruners: a pruned sweep trains the same configurations."""
    from hydra_plugins.ranking_exp_sweeper.config import SamplerConfig
    from hydra_plugins.ranking_exp_sweeper.factories import make_sampler

    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
             "batch": optuna.distributions.CategoricalDistribution([16, 32, 64])}
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def proposals(tell):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(SamplerConfig(kind="qmc", seed=3), space))
        out = []
        for i in range(8):
            trial = study.ask(space)
            out.append(trial.params)
            tell(study, trial, i)
        return out

    completed = proposals(lambda s, t, i: s.tell(t, float(i)))
    pruned = proposals(lambda s, t, i: s.tell(t, state=optuna.trial.TrialState.PRUNED if i % 2 else None,
                                             values=None if i % 2 else float(-i)))
    assert completed == pruned and len({p["lr"] for p in completed}) == 8


@pytest.mark.parametrize("kind", ["tpe", "random", "cmaes"])
def test_a_seeded_sampler_never_repeats_draws_across_processes_and_stays_repeatable(tmp_path, kind):
    """A resumed sweep (a new process, a new sampler object with the same seed) and a second worker on
    the same study got the first process's random draws again: a seeded Optuna sampler starts its stream
    over. Seeded by trial number, every trial gets its own draws, and the same sweep the same ones."""
    from hydra_plugins.ranking_exp_sweeper.config import SamplerConfig
    from hydra_plugins.ranking_exp_sweeper.factories import make_sampler

    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "dropout": optuna.distributions.FloatDistribution(0.0, 0.5)}
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def sweep_in_three_processes(name: str) -> list[tuple]:
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        config = SamplerConfig(kind=kind, seed=0, n_startup_trials=10)  # tpe: every trial here a startup draw

        def process():  # what a new sweeper process opens: the stored study, a new sampler
            return optuna.create_study(study_name=name, storage=url, direction="maximize", load_if_exists=True,
                                       sampler=make_sampler(config, space))
        first = process()
        for _ in range(3):
            trial = first.ask(space)
            first.tell(trial, trial.params["dropout"])
        resumed, second_worker = process(), process()
        for _ in range(2):
            for study in (resumed, second_worker):
                trial = study.ask(space)
                study.tell(trial, trial.params["dropout"])
        return [tuple(sorted(t.params.items())) for t in first.get_trials()]

    proposals = sweep_in_three_processes("a")
    assert len(proposals) == 7 and len(set(proposals)) == 7, proposals
    assert sweep_in_three_processes("b") == proposals
