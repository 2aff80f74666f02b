"""``python -m ranking_exp.predict model=... input=FILE output=SCORES``: score a LETOR file.

Writes one score per input line, in input order (atomically: a failed run leaves no partial
file), and prints the ranking metrics of the file's labels under the project's convention.
``model`` is an export directory or an MLflow model URI (``runs:/``, ``models:/``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ranking_exp.cli import check_structured, run_hydra_app
from ranking_exp.config import MetricsConfig, expand_path
from ranking_exp.errors import ConfigError, DataError


@dataclasses.dataclass
class PredictConfig:
    model: str = MISSING
    input: str = MISSING
    output: str = MISSING
    tracking_uri: str = "sqlite:///mlflow.db"
    batch_size: int = 128
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ConfigError("batch_size: must be > 0")


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)
_LETOR_NAME = re.compile(r"^f([1-9][0-9]*)$")


def letor_feature_indices(spec) -> list[int]:
    """The LETOR feature index of each of a model's example features (``f7`` -> 7), in the spec's order."""
    indices = []
    for name in spec.example_names:
        m = _LETOR_NAME.match(name)
        if not m:
            raise ConfigError(f"model: its feature {name!r} is not a LETOR feature index; it cannot score LETOR files")
        indices.append(int(m.group(1)))
    return indices


def resolve_model(model: str, tracking_uri: str, workdir: str) -> Path:
    """A local SavedModel directory holding feature_spec.json."""
    path = Path(expand_path(model))
    if ":" in model and not path.exists():
        from ranking_exp.tracking import download_model

        try:
            path = Path(download_model(model, tracking_uri, os.getcwd(), workdir))
        except Exception as e:  # MLflow raises several kinds for a bad URI
            raise ConfigError(f"model: cannot load {model!r} from MLflow ({str(e).splitlines()[0]})") from None
    if not path.is_dir():
        raise ConfigError(f"model: {model}: no such directory")
    if not (path / "saved_model.pb").exists() or not (path / "feature_spec.json").exists():
        raise ConfigError(f"model: {path} is not a ranking_exp export (needs saved_model.pb and feature_spec.json)")
    return path


def predict_file(model_dir: Path, input_path: Path, output_path: Path, batch_size: int,
                 metrics: MetricsConfig) -> dict[str, float]:
    import numpy as np
    import tensorflow as tf

    from ranking_exp.data.letor import read_letor
    from ranking_exp.data.spec import FeatureSpec
    from ranking_exp.metrics import evaluate_lists

    spec = FeatureSpec.load(model_dir)
    indices = letor_feature_indices(spec)
    if spec.context:
        raise ConfigError("model: it takes context features, which LETOR files do not have")
    fn = tf.saved_model.load(str(model_dir)).signatures["serving_features"]

    all_labels, all_scores = [], []
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_path.parent, prefix=f".{output_path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            def flush(batch):
                width = max(q.num_docs for q in batch)
                x = np.zeros((len(batch), width, len(indices)), dtype=np.float32)
                mask = np.zeros((len(batch), width), dtype=bool)
                for i, q in enumerate(batch):
                    x[i, : q.num_docs] = q.dense(indices)[0]
                    mask[i, : q.num_docs] = True
                inputs = {name: tf.constant(x[:, :, j:j + 1]) for j, name in enumerate(spec.example_names)}
                inputs[spec.mask_name] = tf.constant(mask)
                scores = fn(**inputs)["outputs"].numpy()
                for i, q in enumerate(batch):
                    s = scores[i, : q.num_docs]
                    out.writelines(f"{v:.9g}\n" for v in s)
                    all_labels.append(q.labels)
                    all_scores.append(s)

            batch = []
            for q in read_letor(input_path, allowed_features=set(indices)):
                batch.append(q)
                if len(batch) == batch_size:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
        os.replace(tmp, output_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return evaluate_lists(all_labels, all_scores, metrics)


def _predict_task(cfg: DictConfig) -> None:
    c: PredictConfig = OmegaConf.to_object(cfg)
    input_path = Path(expand_path(c.input))
    if not input_path.is_file():
        raise DataError(f"{c.input}: no such file")
    with tempfile.TemporaryDirectory() as work:
        model_dir = resolve_model(c.model, c.tracking_uri, work)
        results = predict_file(model_dir, input_path, Path(expand_path(c.output)), c.batch_size, c.metrics)
    n = sum(1 for _ in open(expand_path(c.output)))
    print(f"wrote {n} scores to {c.output}")
    print("  ".join(f"{k}={v:.4f}" for k, v in results.items()))
    sys.stdout.flush()


def main() -> None:
    run_hydra_app(_predict_task, "predict", check=check_structured)


if __name__ == "__main__":
    main()
