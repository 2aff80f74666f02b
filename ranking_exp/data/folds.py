"""The folds of a LETOR directory for cross-validation (``dataset.folds``); no TensorFlow here.

A LETOR benchmark ships as one folder per fold (``MQ2008/Fold1`` .. ``Fold5``), each with its own
``train``/``vali``/``test`` split. ``dataset.path`` names the folder that holds them and
``dataset.folds`` either lists fold folder names or is ``all`` (every sub-folder with a train
file, in natural order: Fold2 before Fold10). Every fold is checked here, so a missing one stops
the command in one line before any fold trains.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ranking_exp.errors import ConfigError

ALL = "all"


def _split_file(fold: Path, split: str) -> Path | None:
    for name in (f"{split}.txt", f"{split}.txt.gz"):
        if (fold / name).is_file():
            return fold / name
    return None


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def resolve_folds(path: str, folds: Any) -> list[tuple[str, Path]]:
    """``[(fold name, fold directory)]`` for ``dataset.path`` and ``dataset.folds``.

    Raises ConfigError naming ``dataset.folds`` (or ``dataset.path``) when the folder, a named
    fold, or a fold's train/vali file is missing.
    """
    root = Path(os.path.abspath(os.path.expanduser(path)))
    if not root.is_dir():
        raise ConfigError(f"dataset.path: {path}: no such directory (with dataset.folds it is the folder "
                          "holding the fold folders)")
    present = sorted((p.name for p in root.iterdir() if p.is_dir() and _split_file(p, "train")), key=_natural_key)
    if isinstance(folds, str):
        if folds != ALL:
            raise ConfigError(f"dataset.folds: must be a list of fold folders or '{ALL}' (got {folds!r})")
        if not present:
            raise ConfigError(f"dataset.folds: no fold folders with a train.txt or train.txt.gz in {path}")
        names = present
    elif isinstance(folds, (list, tuple)):
        names = [str(f) for f in folds]
        if not names:
            raise ConfigError("dataset.folds: empty list (name the fold folders, or use 'all')")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"dataset.folds: listed twice: {', '.join(twice)}")
    else:
        raise ConfigError(f"dataset.folds: must be a list of fold folders or '{ALL}' (got {folds!r})")
    out = []
    for name in names:
        fold = root / name
        if not fold.is_dir() or not name or "/" in name or name in (".", ".."):
            found = f" (found {', '.join(present)})" if present else ""
            raise ConfigError(f"dataset.folds: no fold '{name}' in {path}{found}")
        for split in ("train", "vali"):
            if _split_file(fold, split) is None:
                raise ConfigError(f"dataset.folds: {path}/{name} has no {split}.txt or {split}.txt.gz")
        out.append((name, fold))
    return out
