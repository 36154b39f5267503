"""MLflow: where the tracking store is (location.py), the queue's store on it (mlflow_store.py), the
model registry (registry.py), and here the calls themselves: experiments, runs, batched writes,
searches and artifacts.

It may import sweep.errors, sweep.interrupts and sweep.queue (the store's interface and the stored
run's vocabulary); nothing of spec, execute, results, handin or cli.

Runs are written through one `MlflowClient` per store with explicit run ids (never the fluent API's
per-thread active run), so any process or thread can log to any run. Every failure to use the store
becomes one `TrackingError` naming the store. What the tags mean is the queue's business. MLflow is
imported on first use: commands that only read the index beside the store never load it.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import random
import sqlite3
import sys
import threading
import time
from typing import Iterable, Optional

from .. import interrupts
from ..queue.base import RunRow, TrackingError
from ..queue.schema import EXPERIMENT_KIND, MODEL_TRAINING, RUNS_VIEW, TRAINING_RUNS, VIEW_TAG
from .location import artifact_root, checkpoint, local_path

# The MLflow UI's mode: MLflow 3.17's UI takes it from its GenAI / Model training switch, the `workflowType`
# URL parameter (see runs_page), else the browser's saved choice, else GenAI; it reads the experiment's
# EXPERIMENT_KIND tag only when an experiment is opened without a tab. Its saved view (VIEW_TAG) is opened by
# runs_page. The view ranks runs as `sweep best` does: by the validation error when every run holds images
# out (schema.objective), else by the test error, each as logged at the end of the run.
VAL_RANKED, TEST_RANKED = "final_val_error", "final_test_error"
SWEPT = ("activation", "lr", "depth", "width", "schedule", "seed")  # the settings the view shows as columns
VIEW_PREFIX = "Sweep: ranked by "
PAGE = 1000  # runs per search request


def store_errors(function):
    """Report any failure to use the store as one TrackingError that names the store."""
    @functools.wraps(function)
    def wrapper(uri, *args, **kwargs):
        handled = sys.exc_info()[1]  # an interrupt being handled by the caller is not this call's
        with interrupts.deferred(local_path(uri) is not None):  # an interrupt during the call is raised when it returns
            try:
                return function(uri, *args, **kwargs)
            except KeyboardInterrupt as exc:  # a second one, raised inside the call
                interrupts.release(exc)
                raise
            except TrackingError:
                raise
            except Exception as exc:
                interrupt = interrupts.behind(exc, handled)
                if interrupt is not None:
                    interrupts.release(exc)
                    raise interrupt from None
                mlflow_errors = sys.modules.get("mlflow.exceptions")  # loaded if MLflow raised it
                if mlflow_errors is not None and isinstance(exc, mlflow_errors.MlflowException):
                    raise TrackingError(f"tracking store {uri}: {_first_line(exc.message)}") from exc
                raise TrackingError(f"tracking store {uri} cannot be used: {type(exc).__name__}: "
                                    f"{_first_line(str(exc))}") from exc
    return wrapper


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _row(run) -> RunRow:
    info, data = run.info, run.data
    return RunRow(info.run_id, info.status, info.start_time or 0, info.end_time, info.run_name or "",
                  info.artifact_uri or "", dict(data.tags), dict(data.params), dict(data.metrics),
                  info.lifecycle_stage == "deleted")


def quoted(value: str) -> str:
    """A string literal for an MLflow filter: single quotes, or double ones when the value has a '."""
    if "'" in value and '"' in value:
        raise TrackingError(f"cannot search the store for {value!r}: it holds both kinds of quote")
    return f'"{value}"' if "'" in value else f"'{value}'"


def _artifact_root(uri: str, experiment: str) -> Optional[str]:
    """A local store's experiment keeps its artifacts in a folder named after it, under the store's
    artifact root (./mlruns/NAME beside ./mlflow.db): wherever the command that created it ran."""
    path = local_path(uri)
    if path is not None:
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
        return (artifact_root(path) / safe_name).as_uri()
    return None  # a tracking server or database store decides


@functools.lru_cache(maxsize=8)
def client(uri: str):
    import logging

    from mlflow import MlflowClient

    # MLflow logs a database error with its whole traceback before raising it; the error itself comes
    # out of here as one TrackingError line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    path = local_path(uri)
    if path is not None:  # what this process wrote goes into the store's file before it ends
        atexit.register(checkpoint, path)
    return MlflowClient(tracking_uri=uri)


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # a column of the UI's runs table


def runs_view(ranked_by: str = VAL_RANKED) -> str:
    """The saved view of the runs table (MLflow 3.17's format: a JSON envelope around the view's JSON
    state): every run ranked by `ranked_by`, lowest first, with both final errors, the swept settings,
    the models and the data in view, and run names wide enough to read."""
    other = TEST_RANKED if ranked_by == VAL_RANKED else VAL_RANKED
    ranked, shown = _column("metrics", ranked_by), _column("metrics", other)
    settings = [_column("params", s) for s in SWEPT]
    name, models, data = (_column("attributes", a) for a in ("Run Name", "Models", "Dataset"))
    state = {"searchFilter": "", "orderByKey": ranked, "orderByAsc": True, "startTime": "ALL",
             "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
             "selectedColumns": [ranked, shown, models, *settings, data],
             "columnOrder": [name, "runDateAndNestInfo", ranked, shown, models, *settings, data, "duration"],
             "columnWidths": {name: 275, "runDateAndNestInfo": 105, ranked: 115, shown: 120, models: 175,
                              **dict(zip(settings, (95, 60, 65, 65, 125, 55))), data: 430}}
    now = int(time.time() * 1000)
    return json.dumps({"name": f"{VIEW_PREFIX}{ranked_by}", "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})


def runs_page(server_url: str, experiment_id: str) -> str:
    """The MLflow UI's page of the experiment's runs, in model-training mode, in the saved view."""
    return (f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}")


def _ours(view: Optional[str]) -> bool:
    """A view the sweep wrote (a user's own view, or one changed and saved by name, is left alone)."""
    try:
        return json.loads(view)["name"].startswith(VIEW_PREFIX)
    except (TypeError, ValueError, KeyError, AttributeError):
        return False


def _tag_for_the_ui(c, experiment_id: str, tags: dict, ranked_by: str) -> None:
    if tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        c.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    view = tags.get(VIEW_TAG)
    if view is None or _ours(view) and json.loads(view)["state"] != json.loads(runs_view(ranked_by))["state"]:
        c.set_experiment_tag(experiment_id, VIEW_TAG, runs_view(ranked_by))


def _ranked_by(c, experiment_id: str) -> str:
    """What `sweep best --metric auto` ranks the experiment's runs by: the validation error unless a
    training run holds no images out (its `validation` param is 0)."""
    test_only = c.search_runs([experiment_id], f"{TRAINING_RUNS} and params.validation = '0'", max_results=1)
    return TEST_RANKED if test_only else VAL_RANKED


@store_errors
def ensure_runs_view(uri: str, experiment_id: str) -> str:
    """Give the experiment the model-training kind and the saved view of its runs, ranked as its runs
    are ranked (the view is brought up to date unless a user replaced it); returns the ranking metric."""
    c = client(uri)
    ranked_by = _ranked_by(c, experiment_id)
    _tag_for_the_ui(c, experiment_id, c.get_experiment(experiment_id).tags, ranked_by)
    return ranked_by


@store_errors
def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if needed, with its model-training kind and the saved view of its
    runs that runs_page opens (ranked by the validation error until runs without one are stored:
    `sweep ui` brings it up to date)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        _tag_for_the_ui(c, found.experiment_id, found.tags, _ranked_by(c, found.experiment_id))
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_root(uri, name),
                                   tags={EXPERIMENT_KIND: MODEL_TRAINING, VIEW_TAG: runs_view()})
    except MlflowException as exc:
        if "already exists" not in str(exc):
            raise
        return c.get_experiment_by_name(name).experiment_id  # another sweep created it a moment ago


@store_errors
def find_experiment(uri: str, name: str) -> Optional[str]:
    found = client(uri).get_experiment_by_name(name)
    return found.experiment_id if found is not None and found.lifecycle_stage == "active" else None


_artifact_uris: dict = {}  # (store, run id) -> the artifact URI of a run this process created, until it is used
_REMEMBERED = 1000
_artifact_uris_lock = threading.Lock()


@store_errors
def create_run(uri: str, experiment_id: str, name: str, tags: dict, start_ms: Optional[int] = None) -> str:
    """A new RUNNING run; it starts at `start_ms` (ms since the epoch, the writer's clock), else now."""
    info = client(uri).create_run(experiment_id, start_time=start_ms, run_name=name, tags=tags).info
    with _artifact_uris_lock:  # the sweep's process writes runs from its relay's threads too
        _artifact_uris[uri, info.run_id] = info.artifact_uri
        while len(_artifact_uris) > _REMEMBERED:
            del _artifact_uris[next(iter(_artifact_uris))]
    return info.run_id


@store_errors
def delete_run(uri: str, run_id: str) -> None:
    client(uri).delete_run(run_id)


@store_errors
def log_batch(uri: str, run_id: str, metrics: Iterable[tuple] = (), params: Optional[dict] = None,
              tags: Optional[dict] = None, now_ms: Optional[int] = None) -> None:
    """One request: metrics as (key, value, step) triples, stamped `now_ms` (else now), params and
    tags as mappings."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000) if now_ms is None else now_ms
    client(uri).log_batch(run_id,
                          metrics=[Metric(k, float(v), now, int(step)) for k, v, step in metrics],
                          params=[Param(k, str(v)) for k, v in (params or {}).items()],
                          tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
                          synchronous=True)  # even under MLFLOW_ENABLE_ASYNC_LOGGING: a refused param is a fence


@store_errors
def set_status(uri: str, run_id: str, status: str, end_ms: Optional[int] = None) -> None:
    """End a run (FINISHED, FAILED, KILLED) at `end_ms` (else now), or set it RUNNING again."""
    if status == "RUNNING":
        client(uri).update_run(run_id, status="RUNNING")
    else:
        client(uri).set_terminated(run_id, status, end_time=end_ms)


@store_errors
def log_artifact(uri: str, run_id: str, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
    """Copy a file into the run's artifacts; for a run created by this process, straight to where they
    go (MLflow's client would first read the run from the store to find that out)."""
    with _artifact_uris_lock:
        known = _artifact_uris.pop((uri, run_id), None)
    if known is None:
        client(uri).log_artifact(run_id, str(path), artifact_path)
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(known, tracking_uri=uri).log_artifact(str(path), artifact_path)


@store_errors
def log_artifacts(uri: str, run_id: str, folder: str | os.PathLike, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(folder), artifact_path)


@store_errors
def download_artifact(uri: str, run_id: str, path: str, dst: str | os.PathLike) -> str:
    return client(uri).download_artifacts(run_id, path, str(dst))


_INDEXES = ("create index if not exists sweep_tags_key_value on tags (key, value)",
            # what a sync of the mirror asks: runs ended since, runs RUNNING, runs deleted
            "create index if not exists sweep_runs_end on runs (experiment_id, end_time)",
            "create index if not exists sweep_runs_status on runs (experiment_id, status, lifecycle_stage)",
            "create index if not exists sweep_runs_lifecycle on runs (experiment_id, lifecycle_stage, status)")
_tags_indexed: set = set()


def index_tag_values(uri: str) -> None:
    """Give a local store indexes on its tags' values and on the runs' end time, status and
    lifecycle (once per process), so that finding a key's runs, a session's or the sweep's parent
    reads those runs alone, and so does a sync of the mirror. MLflow indexes its tags table by
    (key, run) only: without this, each claim reads the tags of every run in the store, and a
    claim's cost grows with the number of runs. A tracking server's database needs the tags'
    index from its administrator (see docs/scaling.md)."""
    path = local_path(uri)
    if uri in _tags_indexed or path is None or not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            for index in _INDEXES:
                db.execute(index)
            db.commit()
    except sqlite3.Error:
        return  # MLflow has not made its tables yet, or the store is read-only: lookups work, only slower
    _tags_indexed.add(uri)


@store_errors
def search(uri: str, experiment_id: str, query: str = "", view: str = "active",
           max_results: Optional[int] = None, order_by: Optional[list] = None) -> list[RunRow]:
    """Runs of the experiment matching an MLflow filter string, every page (or the first `max_results`)."""
    from mlflow.entities import ViewType

    view_type = {"active": ViewType.ACTIVE_ONLY, "deleted": ViewType.DELETED_ONLY, "all": ViewType.ALL}[view]
    rows, token = [], None
    while True:
        size = PAGE if max_results is None else min(PAGE, max_results - len(rows))
        page = client(uri).search_runs([experiment_id], query, view_type, max_results=size,
                                       order_by=order_by, page_token=token)
        rows += [_row(r) for r in page]
        token = page.token
        if not token or (max_results is not None and len(rows) >= max_results):
            return rows


@store_errors
def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


@store_errors
def log_inputs(uri: str, run_id: str, parts: Iterable) -> None:
    """One request: the data a run trained, validated and was tested on, as MLflow dataset inputs,
    described, never copied. Each part (mnist_core.data.DataPart) gives a dataset named `name` with
    its `digest`, a local source (the folder of its IDX files) and a profile (images, files, split),
    and the input's context tag (training, validation, test)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for part in parts:
        profile = {"images": part.images, "files": ", ".join(part.files)}
        if part.split:
            profile["split"] = part.split
        dataset = Dataset(part.name, part.digest, "local", json.dumps({"uri": part.source}),
                          profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, part.context)]))
    for attempt in range(3):
        try:
            return client(uri).log_inputs(run_id, datasets=inputs)
        except MlflowException:  # e.g. another worker stored the same new dataset at the same moment
            if attempt == 2:
                raise
            time.sleep(random.uniform(0.05, 0.5))
