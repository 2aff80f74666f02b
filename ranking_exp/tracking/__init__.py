"""MLflow tracking: the only place (with its pyfunc model file) that imports mlflow.

One MLflow run per training: params are the flattened composed config, metrics come every
epoch from a Keras callback and at the end from the test split, artifacts are the model
(a pyfunc wrapping the SavedModel, loadable with ``mlflow.pyfunc.load_model``), the Hydra
config and overrides, and the TensorBoard logs. A run that raises is marked FAILED. A LightGBM
run (``scorer=lightgbm``) logs its booster as an MLflow LightGBM model instead (``log_lightgbm``);
a cross-validation run is a parent run over one child run per fold, an ensemble of seeds one
over a child run per seed.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from ranking_exp.shared_db import open_shared

PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
MODEL_NAME = "model"


def resolve_uri(uri: str, launch_dir: str | os.PathLike) -> str:
    """Makes a relative ``sqlite:///x.db`` (or plain path) absolute against the launch dir."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(launch_dir) / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri and not uri.startswith("/"):
        return str((Path(launch_dir) / uri).resolve())
    return uri


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}``; lists are kept whole as their text."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


class Tracker:
    def __init__(self, uri: str, experiment: str, launch_dir: str | os.PathLike):
        self.uri = resolve_uri(uri, launch_dir)
        self.experiment = experiment
        mlflow.set_tracking_uri(self.uri)
        # Opening a fresh database store creates its schema; sweep workers may do that together.
        self.client = open_shared(lambda: MlflowClient(self.uri), f"MLflow store {self.uri}", url=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self._create_experiment(launch_dir)
        self.run_id: str | None = None

    def _create_experiment(self, launch_dir) -> str:
        artifact_location = None
        if self.uri.startswith("sqlite:///"):
            # Artifacts beside the database, not in whichever directory a later run starts from.
            db_dir = Path(self.uri[len("sqlite:///"):]).parent
            artifact_location = (db_dir / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    @contextlib.contextmanager
    def start_run(self, run_name: str | None, tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, resume_run_id: str | None = None) -> Iterator[str]:
        """An active run; FAILED if the body raises, KILLED on Ctrl-C or when stopped on
        purpose (tag ``state`` says why, e.g. PRUNED), FINISHED otherwise. ``resume_run_id``
        continues an earlier run (RUNNING again) instead of creating one."""
        from ranking_exp.errors import RunStopped

        if resume_run_id:
            run = mlflow.start_run(run_id=resume_run_id, nested=parent_run_id is not None)
            mlflow.set_tags(dict(tags or {}))
        else:
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=dict(tags or {}),
                                   parent_run_id=parent_run_id, nested=parent_run_id is not None)
        self.run_id = run.info.run_id
        try:
            yield self.run_id
        except RunStopped as e:
            mlflow.set_tag("state", e.state)
            mlflow.end_run("KILLED")
            raise
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        else:
            mlflow.set_tag("state", "COMPLETE")
            mlflow.end_run("FINISHED")

    def run_status(self, run_id: str) -> str | None:
        """RUNNING, FINISHED, FAILED, KILLED; None if there is no such (live) run."""
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return None
        return None if run.info.lifecycle_stage != "active" else run.info.status

    def mark_failed(self, run_id: str, reason: str) -> None:
        """Ends a run some killed process left RUNNING."""
        if self.run_status(run_id) == "RUNNING":
            self.client.set_tag(run_id, "state", reason)
            self.client.set_terminated(run_id, "FAILED")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        mlflow.log_metrics({f"{prefix}{k}": v for k, v in finite_metrics(metrics).items()}, step=step)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(local_dir).exists():
            mlflow.log_artifacts(str(local_dir), artifact_path)

    def log_artifact(self, local_file: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(local_file).exists():
            mlflow.log_artifact(str(local_file), artifact_path)

    def log_ranker(self, export_dir: str, feature_spec: Mapping[str, Any]) -> str:
        """Logs the SavedModel as a pyfunc model; returns its URI."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        columns = [ColSpec("string", "qid", required=False)]
        for f in feature_spec["context"] + feature_spec["example"]:
            columns.append(ColSpec("double", f["name"], required=f["default"] is None))
        signature = ModelSignature(inputs=Schema(columns),
                                   outputs=Schema([ColSpec("float", "score"), ColSpec("long", "rank")]))
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={"saved_model": export_dir},
            signature=signature,
            pip_requirements=_requirements(),
        )
        return info.model_uri  # models:/<model id>; runs:/<run id>/model names it too

    def log_metric_history(self, name: str, values: list[float]) -> None:
        """One metric's values at steps 0, 1, ... in a few batched calls (e.g. per boosting round)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(name, float(v), now, step) for step, v in enumerate(values) if math.isfinite(float(v))]
        for i in range(0, len(points), 1000):
            self.client.log_batch(self.run_id, metrics=points[i:i + 1000])

    def log_lightgbm(self, booster, columns: list[str], extra_files: list[str] = ()) -> str:
        """Logs a LightGBM booster as an MLflow LightGBM model (a pyfunc: a DataFrame with the
        feature columns in, one score per row out); returns its URI."""
        import mlflow.lightgbm
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(inputs=Schema([ColSpec("double", c) for c in columns]),
                                   outputs=Schema([ColSpec("double")]))
        info = mlflow.lightgbm.log_model(booster, name=MODEL_NAME, signature=signature,
                                         extra_files=list(extra_files) or None,
                                         pip_requirements=_requirements(("lightgbm", "numpy", "pandas", "mlflow")))
        return info.model_uri

    def keras_callback(self):
        """A Keras callback that logs every epoch's logs (train and ``val_`` metrics)."""
        import tensorflow as tf

        tracker = self

        class MlflowEpochLogger(tf.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                metrics = dict(logs or {})
                lr = getattr(self.model.optimizer, "learning_rate", None)
                with contextlib.suppress(Exception):
                    metrics["learning_rate"] = float(tf.keras.backend.get_value(
                        lr(self.model.optimizer.iterations) if callable(lr) else lr))
                tracker.log_metrics(metrics, step=epoch)

        return MlflowEpochLogger()


class NullTracker:
    """Records nothing: the tracker of a non-chief worker (the chief records the run)."""

    run_id = None

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def log_artifacts(self, *args, **kwargs) -> None:
        pass

    def set_tags(self, *args, **kwargs) -> None:
        pass

    def log_ranker(self, *args, **kwargs) -> None:
        return None

    def log_lightgbm(self, *args, **kwargs) -> None:
        return None

    def log_metric_history(self, *args, **kwargs) -> None:
        pass

    def keras_callback(self):
        import tensorflow as tf

        return tf.keras.callbacks.Callback()


def _requirements(dists=("tensorflow", "tensorflow-ranking", "numpy", "pandas", "mlflow")) -> list[str]:
    from importlib.metadata import version

    pins = []
    for dist in dists:
        with contextlib.suppress(Exception):
            pins.append(f"{dist}=={version(dist)}")
    return pins


def download_model(uri: str, tracking_uri: str | None, launch_dir: str | os.PathLike, dst: str) -> str:
    """Local SavedModel directory for a ``runs:/``/``models:/``/``mlflow-artifacts:`` URI."""
    if tracking_uri:
        mlflow.set_tracking_uri(resolve_uri(tracking_uri, launch_dir))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    if not (local / "MLmodel").exists():
        return str(local)  # a plain artifact directory (e.g. an export logged as files)
    artifacts = mlflow.models.Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
    if "saved_model" not in artifacts:
        raise ValueError(f"{uri} is an MLflow model but not a ranking_exp ranker")
    return str(local / artifacts["saved_model"]["path"])


class SweepRecorder:
    """The MLflow parent run of a sweep: trials are its child runs (``tracking.parent_run_id``).

    Running the same sweep again (same experiment and study name) continues the same parent.
    """

    ROLE_TAG, STUDY_TAG = "ranking_exp.role", "ranking_exp.study"

    def __init__(self, uri: str, experiment: str, launch_dir: str | os.PathLike, study_name: str,
                 parent_run_id: str | None = None):
        self.tracker = Tracker(uri, experiment, launch_dir)
        self.client = self.tracker.client
        self.study_name = study_name
        self._created = False
        if parent_run_id:
            self.parent_run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
            return
        found = self.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`{self.ROLE_TAG}` = 'sweep' and tags.`{self.STUDY_TAG}` = '{study_name}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            self.parent_run_id = found[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.tracker.experiment_id, run_name=f"sweep-{study_name}",
                                         tags={self.ROLE_TAG: "sweep", self.STUDY_TAG: study_name})
            self.parent_run_id = run.info.run_id
            self._created = True

    def adopt(self) -> str:
        """The parent run all workers of the study share: of its RUNNING parent runs, the one
        created first (workers that start together each create one; this choice is the same in
        every worker and never changes once made). Deletes ours if it lost and has no children."""
        running = self.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=(f"tags.`{self.ROLE_TAG}` = 'sweep' and tags.`{self.STUDY_TAG}` = '{self.study_name}'"
                           " and attributes.status = 'RUNNING'"), max_results=1000)
        if not running:
            return self.parent_run_id
        first = min(running, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        mine = self.parent_run_id
        if first != mine:
            self.parent_run_id = first
            children = self.client.search_runs([self.tracker.experiment_id],
                                               filter_string=f"tags.`mlflow.parentRunId` = '{mine}'", max_results=1)
            if self._created and not children:
                self.client.delete_run(mine)
                self._created = False
        return self.parent_run_id

    def finish(self, summary: Mapping[str, Any], best_run_id: str | None, images: list[Path] = (),
               register_as: str | None = None, alias: str = "champion", model_uri: str | None = None) -> str | None:
        """Best value/params, counts and plots on the parent; the best model registered with an alias.

        Returns the registered model version, if any.
        """
        import json
        import tempfile

        rid = self.parent_run_id
        metrics = {k: float(summary[k]) for k in ("best_value", "n_complete", "n_pruned", "n_failed") if k in summary}
        for k, v in metrics.items():
            self.client.log_metric(rid, k, v)
        for k, v in (summary.get("best_params") or {}).items():
            self.client.set_tag(rid, f"best.{k}", str(v))
        if best_run_id:
            self.client.set_tag(rid, "best_run_id", best_run_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "optimization_results.json"
            path.write_text(json.dumps(dict(summary), indent=2, default=str))
            self.client.log_artifact(rid, str(path))
        for image in images:
            self.client.log_artifact(rid, str(image), "plots")
        version = None
        if register_as and model_uri:  # trials log a model unless tracking.log_model=false
            mv = mlflow.register_model(model_uri, register_as)
            self.client.set_registered_model_alias(register_as, alias, mv.version)
            self.client.set_tag(rid, "registered_model", f"models:/{register_as}@{alias}")
            version = mv.version
        self.client.set_terminated(rid, "FINISHED" if summary.get("n_complete") else "FAILED")
        return version


def model_source(uri: str, tracking_uri: str | None, launch_dir: str | os.PathLike) -> dict[str, Any]:
    """What an MLflow model URI points at: ``run_id``, and for the registry ``registered_model``
    and ``version`` (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/STAGE``);
    ``model_id`` for MLflow 3 logged-model URIs (``models:/m-...``)."""
    client = MlflowClient(resolve_uri(tracking_uri, launch_dir) if tracking_uri else None)
    out: dict[str, Any] = {}
    if uri.startswith("runs:/"):
        out["run_id"] = uri[len("runs:/"):].strip("/").split("/")[0]
        return out
    if not uri.startswith("models:/"):
        return out
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    elif "/" in rest:
        name, ref = rest.split("/", 1)
        mv = client.get_model_version(name, ref) if ref.isdigit() else client.get_latest_versions(name, [ref])[0]
    else:
        logged = client.get_logged_model(rest)
        out["model_id"] = logged.model_id
        if logged.source_run_id:
            out["run_id"] = logged.source_run_id
        return out
    out.update(registered_model=mv.name, version=str(mv.version))
    if mv.run_id:
        out["run_id"] = mv.run_id
    if getattr(mv, "model_id", None):
        out["model_id"] = mv.model_id
    return out
