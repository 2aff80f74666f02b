"""User code named by import path in the config (scorer, preprocessor, model builder).

Resolved at start-up, before data preparation and training, so a typo fails in a second
with the config key that named it.
"""
from __future__ import annotations

from typing import Any, Callable

from hydra.utils import get_object

from ranking_exp.errors import ConfigError


def load_callable(path: str, key: str) -> Callable[..., Any]:
    """Imports ``package.module.Name`` and checks it can be called."""
    try:
        obj = get_object(path)
    except Exception as e:  # ImportError, AttributeError, or an error raised by the module
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: cannot import {path!r} ({reason})") from None
    if not callable(obj):
        raise ConfigError(f"{key}: {path!r} is a {type(obj).__name__}, not a class or function")
    return obj
