"""Search spaces in hydra-optuna-sweeper's syntax -> Optuna distributions.

``interval(a, b)`` float, ``int(interval(a, b))`` int, ``tag(log, ...)`` log scale,
``range(start, stop[, step])`` stepped (stop excluded, as in Hydra), ``choice(...)`` or
``a,b,c`` categorical. Values that are not numbers or strings (lists such as hidden layer
sizes) are kept as their override text, which is what the trial's override receives.
"""
from __future__ import annotations

from collections.abc import Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.ranking_exp_sweeper.config import is_number
from ranking_exp.errors import ConfigError


def _is_primitive(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def parse_params(params: Mapping[str, str]):
    """``{key: expression}`` -> ``{key: optuna distribution}``; one-line ConfigError on nonsense."""
    import optuna.distributions as D

    parser = OverridesParser.create()
    out = {}
    for key, expr in params.items():
        where = f"hydra.sweeper.params.{key}"
        try:
            override = parser.parse_overrides([f"{key}={expr}"])[0]
        except Exception as e:
            raise ConfigError(f"{where}: cannot parse {expr!r} ({str(e).splitlines()[0]})") from None
        value = override.value()
        if isinstance(value, ChoiceSweep):
            if not value.list:
                raise ConfigError(f"{where}: empty choice")
            choices = value.list if all(_is_primitive(v) for v in value.list) else list(override.sweep_string_iterator())
            out[key] = D.CategoricalDistribution(choices)
        elif isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step or 1
            if isinstance(start, int) and isinstance(stop, int) and isinstance(step, int):
                high = start + ((stop - 1 - start) // step) * step
                if high < start:
                    raise ConfigError(f"{where}: empty range {expr}")
                out[key] = D.IntDistribution(start, high, step=step)
            else:
                n = int((stop - start) / step - 1e-9)
                if n < 0:
                    raise ConfigError(f"{where}: empty range {expr}")
                out[key] = D.FloatDistribution(start, start + n * step, step=step)
        elif isinstance(value, IntervalSweep):
            log = "log" in value.tags
            if not value.start < value.end:
                raise ConfigError(f"{where}: empty interval {expr} (low must be < high)")
            if log and value.start <= 0:
                raise ConfigError(f"{where}: a log interval needs low > 0")
            if isinstance(value.start, int) and isinstance(value.end, int):
                out[key] = D.IntDistribution(value.start, value.end, log=log)
            else:
                out[key] = D.FloatDistribution(float(value.start), float(value.end), log=log)
        else:
            raise ConfigError(f"{where}: {expr!r} is a single value, not a search space "
                              "(use interval, range, choice or a,b,c)")
    return out


def check_paths(params: Mapping[str, str], job_cfg: DictConfig, groups: set[str]) -> None:
    """Every swept key must be a config group (``loss``) or an existing config key."""
    for key in params:
        if key.lstrip("+") in groups:
            continue
        try:
            found = OmegaConf.select(job_cfg, key, default="__missing__", throw_on_missing=False) != "__missing__"
        except Exception:  # struct configs raise for unknown keys
            found = False
        if not found:
            raise ConfigError(f"hydra.sweeper.params.{key}: no such config key or group")


def enqueued_params(entries, distributions) -> list[dict]:
    """``hydra.sweeper.enqueue_trials`` -> the param dicts for Optuna's ``study.enqueue_trial``.

    Each entry fixes some swept keys (the sampler draws the rest), e.g. the configuration in use, so
    the sweep measures it the same way as its challengers. Values are YAML values; a list (hidden
    layer sizes) matches a ``choice`` of lists by its override text. One-line ConfigError on a key
    that is not swept or a value outside its search space."""
    import optuna.distributions as D

    out = []
    for i, entry in enumerate(entries or []):
        where = f"hydra.sweeper.enqueue_trials[{i}]"
        if not isinstance(entry, Mapping) or not entry:
            raise ConfigError(f"{where}: must be a mapping of swept keys to values, got {entry!r}")
        params = {}
        for key, value in entry.items():
            dist = distributions.get(key)
            if dist is None:
                raise ConfigError(f"{where}.{key}: not a swept key (swept: {', '.join(sorted(distributions))})")
            if isinstance(value, (list, tuple)):
                value = "[" + ",".join(override_value(v) for v in value) + "]"
            if isinstance(dist, D.CategoricalDistribution):
                # 1 matches 1.0 but not True or "1", which `in` would let through.
                if not any(c == value and (type(c) is type(value) or is_number(c) and is_number(value))
                           for c in dist.choices):
                    raise ConfigError(f"{where}.{key}: {value!r} is not one of the choices "
                                      f"{', '.join(map(str, dist.choices))}")
            else:
                if not is_number(value) or (isinstance(dist, D.IntDistribution) and float(value) != int(value)):
                    raise ConfigError(f"{where}.{key}: {value!r} is not a number in its search space")
                if not dist.low <= value <= dist.high:
                    raise ConfigError(f"{where}.{key}: {value!r} is outside [{dist.low}, {dist.high}]")
                value = int(value) if isinstance(dist, D.IntDistribution) else float(value)
            params[key] = value
        out.append(params)
    return out


def override_value(value) -> str:
    """A sampled value as override text that Hydra parses back to the same value."""
    if value is None:
        return "null"  # str(None) would reach the config as the string "None"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return str(value)
