"""Command-line entry points on Hydra, with config mistakes reported in one line.

Before Hydra starts a run we compose the same config ourselves (``preflight``): a typo in a
key, an unknown group option or a bad value is printed as ``error: <key>: <problem>`` with
exit code 2, before any output directory, MLflow run or TensorFlow import exists.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF 2.15 prints spurious CUDA-factory errors at import
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from hydra import compose, initialize_config_module  # noqa: E402
from hydra._internal.utils import get_args_parser  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hydra.errors import HydraException, MissingConfigException  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from ranking_exp.config import one_line_omegaconf_error, register_configs, to_run_config  # noqa: E402
from ranking_exp.errors import ConfigError, UserError  # noqa: E402

CONFIG_MODULE = "ranking_exp.conf"
log = logging.getLogger("ranking_exp")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def hydra_error_line(e: Exception) -> str:
    """One line out of Hydra's multi-line composition errors."""
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such option (choose from {', '.join(e.options)})"
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return one_line_omegaconf_error(cause)
    if isinstance(cause, MissingConfigException):
        return hydra_error_line(cause)
    return " ".join(str(e).split("\n")[0:1]) or type(e).__name__


def _first_values(overrides: Sequence[str]) -> list[list[str]]:
    """Override lists to check for a multirun: each sweep value once, others at their first."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    firsts, choices = [], []
    for o in parsed:
        values = None
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # an Optuna-style distribution: the sweeper checks those
                values = None
        if values is None:
            firsts.append(o.input_line)
            choices.append(None)
        else:
            prefix = o.get_key_element()
            firsts.append(f"{prefix}={values[0]}")
            choices.append([f"{prefix}={v}" for v in values])
    combos = [firsts]
    for i, vals in enumerate(choices):
        for v in (vals or [])[1:]:
            combos.append(firsts[:i] + [v] + firsts[i + 1:])
    return combos


def preflight(config_name: str, overrides: Sequence[str], multirun: bool,
              check: Callable[[DictConfig], object] = to_run_config) -> None:
    """Composes and validates the config as Hydra will; raises ConfigError with one line."""
    try:
        combos = _first_values(overrides) if multirun else [list(overrides)]
    except HydraException as e:
        raise ConfigError(hydra_error_line(e)) from None
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for combo in combos:
            _compose_and_check(config_name, combo, check)
        if multirun:
            for where, trial in _preflight_sweeper(config_name, combos[0], overrides):
                try:
                    _compose_and_check(config_name, trial, check)
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None


def _compose_and_check(config_name: str, overrides: list[str], check: Callable[[DictConfig], object]) -> None:
    """One run's config composed as Hydra will and validated; ConfigError with one line if not."""
    try:
        cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(hydra_error_line(e)) from None
    if "output_dir" in cfg:  # resolved by Hydra at run time only
        with open_dict(cfg):
            cfg.output_dir = "<output_dir>"
    check(cfg)


def _preflight_sweeper(config_name: str, first: list[str], overrides: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Lets the configured sweeper check its own settings, if it knows how (``preflight``); returns
    the whole trials it knows before running (``(where, overrides)``), for the caller to validate."""
    from hydra.utils import get_class

    try:
        cfg = compose(config_name, overrides=first, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(hydra_error_line(e)) from None
    target = cfg.hydra.sweeper.get("_target_")
    sweeper = get_class(target) if target else None
    if hasattr(sweeper, "preflight"):
        return sweeper.preflight(cfg.hydra.sweeper, cfg, list(overrides)) or []
    return []


def quiet_libraries() -> None:
    """TF Ranking logs every input tensor and TensorFlow every traced function at INFO."""
    import warnings

    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*input example was not provided.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def check_structured(cfg: DictConfig) -> None:
    """Validates a composed config against its structured schema; one-line ConfigError if not."""
    from omegaconf import OmegaConf

    try:
        OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(one_line_omegaconf_error(e)) from None


def run_hydra_app(task: Callable[[DictConfig], object], config_name: str,
                  check: Callable[[DictConfig], object] = to_run_config) -> None:
    """Preflight, then hand over to ``@hydra.main`` with ``task``."""
    import hydra

    register_configs()
    args = get_args_parser().parse_args()
    modes = [flag for flag, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info is not None), ("--shell-completion", args.shell_completion))
             if on]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        fail(f"{' and '.join(modes)}: give only one of --run, --multirun, --cfg, --info, --shell-completion")
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    if not informational:
        try:
            preflight(args.config_name or config_name, args.overrides, args.multirun, check)
        except UserError as e:
            fail(str(e), e.exit_code)

    @hydra.main(version_base="1.3", config_path="conf", config_name=config_name)
    def _main(cfg: DictConfig):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        quiet_libraries()
        try:
            return task(cfg)
        except UserError as e:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                log.error("%s", e)  # one job of a sweep: the sweeper records it and goes on
                raise
            fail(str(e), e.exit_code)

    _main()


def _train_task(cfg: DictConfig) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    from ranking_exp.experiment import run_training, summary_table

    run = to_run_config(cfg)
    hc = HydraConfig.get()
    choices = {g: hc.runtime.choices.get(g) for g in ("dataset", "scorer", "loss", "optimizer", "strategy")}
    unused = ("strategy", "loss", "optimizer") if choices["scorer"] == "lightgbm" else ("strategy",)
    run_name = "-".join(str(v) for k, v in choices.items() if k not in unused)
    tags = {f"choice.{k}": str(v) for k, v in choices.items()}
    tags["overrides"] = " ".join(hc.overrides.task)
    hydra_dir = os.path.join(hc.runtime.output_dir, hc.output_subdir) if hc.output_subdir else None
    if getattr(run.dataset, "folds", None) is not None:  # cross-validation: a run per fold (cv.py)
        from ranking_exp import cv

        res = cv.run_cv(run, cfg, launch_dir=get_original_cwd(), run_name=run_name, tags=tags, hydra_dir=hydra_dir)
        log.info("cross-validation over %d folds: MLflow parent run %s (%s)\n%s", len(res.folds), res.run_id,
                 run.tracking.uri, cv.summary_table(res))
        means = {k[:-len("_mean")]: v for k, v in res.metrics.items() if k.endswith("_mean")}
        return {"objective": res.objective, **means, **res.metrics, "mlflow_run_id": res.run_id, "model_uri": None}
    result = run_training(run, cfg, launch_dir=get_original_cwd(), run_name=run_name, tags=tags,
                          hydra_dir=hydra_dir)
    if run.ensemble.enabled:  # ensemble.py: the ensemble's metrics beside its members' mean +- std
        from ranking_exp import ensemble

        log.info("ensemble of %d seeds: MLflow parent run %s (%s), model %s\n%s", len(result.members),
                 result.run_id, run.tracking.uri, result.model_uri, ensemble.summary_table(result))
    elif result.run_id:
        log.info("MLflow run %s (%s), model %s\n%s", result.run_id, run.tracking.uri, result.model_uri,
                 summary_table(result))
    else:  # a non-chief worker of a multi-worker run
        log.info("worker done; the chief exports and records the run\n%s", summary_table(result))
    return {"objective": result.objective, **result.metrics, "mlflow_run_id": result.run_id,
            "model_uri": result.model_uri}


def main() -> None:
    """``python -m ranking_exp [overrides]``: train, validate, export and record one run."""
    run_hydra_app(_train_task, "config")
