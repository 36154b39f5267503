"""Everything that touches MLflow: the store, experiments, runs, metrics, artifacts and searches.

Runs are written through `MlflowClient` with explicit run ids (never the fluent API's per-thread
active run), so any process or thread can log to any run.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from .errors import SweepError

DEFAULT_STORE_DIR = "mlruns"
# Tags of a training run; the key is the run's identity in the durable queue.
KEY, GRIDS, SWEEP, SESSION, HEARTBEAT, DIVERGED, ERROR, ATTEMPT, KIND = (
    "sweep.key", "sweep.grids", "sweep.name", "sweep.session", "sweep.heartbeat",
    "sweep.diverged", "sweep.error", "sweep.attempt", "sweep.kind")
EXPERIMENT_KIND = "mlflow.experimentKind"  # makes the MLflow UI open the experiment as model training


class TrackingError(SweepError):
    """The tracking store cannot be reached, read or written."""


def _store_errors(function):
    """Report any failure to use the store as one TrackingError that names the store."""
    @functools.wraps(function)
    def wrapper(uri, *args, **kwargs):
        try:
            return function(uri, *args, **kwargs)
        except TrackingError:
            raise
        except MlflowException as exc:
            raise TrackingError(f"tracking store {uri}: {exc.message}") from exc
        except Exception as exc:
            raise TrackingError(f"tracking store {uri} cannot be used: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return wrapper


def default_tracking_uri(base: str | os.PathLike = ".") -> str:
    return f"sqlite:///{(Path(base).resolve() / DEFAULT_STORE_DIR / 'mlflow.db').as_posix()}"


def store_uri(uri: Optional[str] = None) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI, else SQLite under ./mlruns; creates nothing."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def existing_store(uri: Optional[str], hint: str) -> str:
    """The store to read from; a local store that does not exist yet is an error saying what to do."""
    uri = store_uri(uri)
    if not store_exists(uri):
        raise TrackingError(f"no tracking store at {uri}; {hint}")
    return uri


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI, else SQLite under ./mlruns; makes the local folder."""
    uri = store_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri:
        raise TrackingError(f"tracking URI {uri!r} is not supported: MLflow 3 refuses a plain folder store; "
                            f"use sqlite:///PATH/mlflow.db or an http(s):// tracking server")
    return uri


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https", "databricks")


def _artifact_root(uri: str, experiment: str) -> Optional[str]:
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent / "artifacts" / "".join(
            c if c.isalnum() or c in "-_." else "_" for c in experiment)
        return folder.as_uri()
    return None  # a tracking server or database store decides


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@_store_errors
def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if needed; call once in the parent, before any worker starts."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND not in found.tags:
            c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, "custom_model_development")
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_root(uri, name),
                                   tags={EXPERIMENT_KIND: "custom_model_development"})
    except MlflowException as exc:
        if "already exists" not in str(exc):
            raise
        return c.get_experiment_by_name(name).experiment_id  # another sweep created it a moment ago


@_store_errors
def find_experiment(uri: str, name: str) -> Optional[str]:
    found = client(uri).get_experiment_by_name(name)
    return found.experiment_id if found is not None and found.lifecycle_stage == "active" else None


@_store_errors
def parent_run(uri: str, experiment_id: str, sweep_name: str, params: dict) -> str:
    """The sweep's parent run (reused on resume, so every attempt nests under one parent)."""
    c = client(uri)
    run_id = find_parent_run(uri, experiment_id, sweep_name)
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(experiment_id, run_name=f"sweep:{sweep_name}", tags={KIND: "parent", SWEEP: sweep_name})
    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


@_store_errors
def end_parent(uri: str, run_id: str, status: str, counts: dict) -> None:
    c = client(uri)
    c.log_batch(run_id, metrics=[Metric(f"runs_{k}", float(v), _now_ms(), 0) for k, v in counts.items()])
    c.set_terminated(run_id, status)


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run of a training attempt, as the queue sees it."""
    run_id: str
    key: str
    status: str
    start_time: int          # ms since the epoch
    heartbeat: float         # s since the epoch, 0 when none
    session: str
    error: str
    diverged: bool


def _record(run) -> RunRecord:
    tags = run.data.tags
    return RunRecord(run.info.run_id, tags.get(KEY, ""), run.info.status, run.info.start_time or 0,
                     float(tags.get(HEARTBEAT, 0) or 0), tags.get(SESSION, ""), tags.get(ERROR, ""),
                     tags.get(DIVERGED) == "true")


@_store_errors
def run_records(uri: str, experiment_id: str, key: Optional[str] = None) -> list[RunRecord]:
    """Every training run of the experiment (or of one key), all pages."""
    c = client(uri)
    query = f"tags.`{KEY}` = '{key}'" if key else f"tags.`{KIND}` = 'train'"
    records, token = [], None
    while True:
        page = c.search_runs([experiment_id], query, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        records += [_record(r) for r in page]
        token = page.token
        if not token:
            return records


def create_training_run(uri: str, experiment_id: str, parent_id: str, name: str, key: str,
                        grids: tuple, sweep_name: str, session: str, attempt: int) -> str:
    run = client(uri).create_run(experiment_id, run_name=name, tags={
        MLFLOW_PARENT_RUN_ID: parent_id, KIND: "train", KEY: key, GRIDS: ",".join(grids),
        SWEEP: sweep_name, SESSION: session, ATTEMPT: str(attempt), HEARTBEAT: f"{time.time():.3f}"})
    return run.info.run_id


def delete_run(uri: str, run_id: str) -> None:
    client(uri).delete_run(run_id)


def log_params(uri: str, run_id: str, params: dict) -> None:
    client(uri).log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def log_metrics(uri: str, run_id: str, metrics: dict, step: int) -> None:
    now = _now_ms()
    client(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def beat(uri: str, run_id: str) -> None:
    client(uri).set_tag(run_id, HEARTBEAT, f"{time.time():.3f}")


def log_artifact(uri: str, run_id: str, path: str | os.PathLike) -> None:
    client(uri).log_artifact(run_id, str(path))


def finish_run(uri: str, run_id: str, diverged: bool) -> None:
    c = client(uri)
    c.set_tag(run_id, DIVERGED, "true" if diverged else "false")
    c.set_terminated(run_id, "FINISHED")


def end_run(uri: str, run_id: str, status: str, error: str = "") -> None:
    """Mark a run FAILED or KILLED, keeping the error text (tags hold up to 8000 characters)."""
    c = client(uri)
    if error:
        c.set_tag(run_id, ERROR, error[-7900:])
    c.set_terminated(run_id, status)


@_store_errors
def runs_frame(uri: str, experiment_id: str) -> pd.DataFrame:
    """All training runs of the experiment as MLflow's own search_runs DataFrame."""
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs([experiment_id], filter_string=f"tags.`{KIND}` = 'train'")


def _now_ms() -> int:
    return int(time.time() * 1000)


@_store_errors
def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


@_store_errors
def find_parent_run(uri: str, experiment_id: str, sweep_name: str):
    found = client(uri).search_runs([experiment_id], f"tags.`{KIND}` = 'parent' and tags.`{SWEEP}` = '{sweep_name}'",
                                    max_results=1, order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else None


@_store_errors
def log_artifacts(uri: str, run_id: str, folder: str | os.PathLike, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(folder), artifact_path)


@_store_errors
def register_agent(uri: str, run_id: str, name: str, example_pixels) -> str:
    """Log the run's agent as a pyfunc model (signature and input example included) under the
    run and register it as `name`; returns the registered version."""
    import tempfile
    from types import SimpleNamespace

    from mlflow.models import infer_signature

    from .registry import PIXELS, AgentModel

    mlflow.set_tracking_uri(uri)
    example = pd.DataFrame(example_pixels, columns=PIXELS).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        agent = client(uri).download_artifacts(run_id, "mnist_agent.pt", tmp)
        model = AgentModel()
        model.load_context(SimpleNamespace(artifacts={"agent": agent}))  # as MLflow will call it
        signature = infer_signature(example, model.predict(None, example))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=AgentModel(), artifacts={"agent": agent},
                                           signature=signature, input_example=example,
                                           pip_requirements=["mnist-sweep", "torch", "pandas"],
                                           registered_model_name=name)
    return str(info.registered_model_version)
