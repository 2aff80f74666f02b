"""PreparedData: ELWC TFRecord shards ready for training, with their spec and statistics.

Every dataset option (synthetic, LETOR text, existing ELWC) ends as one of these, so the
training code sees one kind of input. ``metadata.json`` beside the shards records it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ranking_exp.data.spec import FeatureSpec
from ranking_exp.errors import DataError

METADATA_FILE = "metadata.json"
SPLITS = ("train", "vali", "test")


@dataclasses.dataclass
class SplitInfo:
    """The shards of one split; counts are None when unknown (existing ELWC data)."""

    files: list[str]
    num_lists: int | None = None
    num_docs: int | None = None


@dataclasses.dataclass
class FeatureStats:
    """Statistics of one feature over the training split (valid documents only)."""

    count: int
    mean: float
    std: float
    min: float
    max: float


@dataclasses.dataclass
class PreparedData:
    root: Path
    spec: FeatureSpec
    splits: dict[str, SplitInfo]
    stats: dict[str, FeatureStats] | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def split(self, name: str) -> SplitInfo | None:
        return self.splits.get(name)

    def training_on(self, names: list[str] | tuple[str, ...]) -> PreparedData:
        """This data with its ``train`` split made of the lists of ``names`` (e.g. train and vali,
        to refit a chosen configuration); the other splits stay as they are."""
        names = list(names)
        if names == ["train"]:
            return self
        parts = [self.splits.get(n) for n in names]
        missing = [n for n, part in zip(names, parts) if part is None]
        if missing:
            raise DataError(f"{self.root}: train.splits names {', '.join(missing)}, which the data set does not have")
        count = lambda key: None if any(getattr(p, key) is None for p in parts) else sum(getattr(p, key) for p in parts)  # noqa: E731
        train = SplitInfo(files=[f for p in parts for f in p.files], num_lists=count("num_lists"), num_docs=count("num_docs"))
        return dataclasses.replace(self, splits={**self.splits, "train": train})

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": {k: dataclasses.asdict(v) for k, v in self.splits.items()},
            "stats": None if self.stats is None else {k: dataclasses.asdict(v) for k, v in self.stats.items()},
            "source": self.source,
        }

    def save(self) -> None:
        """Writes metadata.json and feature_spec.json into ``root`` (files relative to it)."""
        self.spec.save(self.root)
        d = self.to_dict()
        for info in d["splits"].values():
            info["files"] = [str(Path(f).relative_to(self.root)) if Path(f).is_relative_to(self.root) else f
                             for f in info["files"]]
        tmp = self.root / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        tmp.replace(self.root / METADATA_FILE)

    @classmethod
    def load(cls, root: str | Path) -> PreparedData:
        root = Path(root)
        d = json.loads((root / METADATA_FILE).read_text())
        splits = {
            k: SplitInfo(files=[str(root / f) for f in v["files"]], num_lists=v["num_lists"], num_docs=v["num_docs"])
            for k, v in d["splits"].items()
        }
        stats = None if d.get("stats") is None else {k: FeatureStats(**v) for k, v in d["stats"].items()}
        return cls(root=root, spec=FeatureSpec.load(root), splits=splits, stats=stats, source=d.get("source", {}))
