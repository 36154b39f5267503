"""The stored run: how a sweep keeps its runs in the MLflow store, and how they read back.

This module owns the store's vocabulary: the name of every tag a sweep writes (a run's identity,
its claim, how it ended), how each value is encoded (flags as "true"/"false", times as seconds, the
per-epoch curve as JSON), the one vocabulary of outcomes, and the rule for which metric ranks a run.
Writers build their tags here; readers get a decoded `Attempt`, or decode a column here, and never
parse a tag string themselves. It imports only the standard library and mnist_core.config (no torch).
"""
from __future__ import annotations

import json
import math
from typing import Iterable, NamedTuple, Optional

from mnist_core.config import SETTING_NAMES, SETTING_TYPES

# --- names -------------------------------------------------------------------------------------------

KIND = "sweep.kind"                  # TRAIN or PARENT
TRAIN, PARENT = "train", "parent"
SWEEP = "sweep.name"                 # the sweep file's name (its stem)
PARENT_RUN = "mlflow.parentRunId"    # MLflow's own: nests a training run under the sweep's parent run

# A training run: which run of the sweep it is.
KEY = "sweep.key"                    # the run's identity: a hash of its settings, or a search's slot
GRIDS = "sweep.grids"                # the grids it belongs to, comma-joined
SEARCH = "sweep.search"              # or the search that sampled it,
TRIAL = "sweep.trial"                # and its trial number there
# Its claim (the queue's lease).
SESSION = "sweep.session"            # the `sweep run` that dispatched it
ATTEMPT = "sweep.attempt"            # that command's round
HOLDER = "sweep.holder"              # the process training it: host:pid:start
HEARTBEAT = "sweep.heartbeat"        # the holder's last beat, seconds since the epoch
LEASE = "sweep.lease"                # seconds the claim outlives its last beat
# How it ended.
DIVERGED = "sweep.diverged"          # flag: the loss became NaN or infinite
PRUNED = "sweep.pruned"              # flag: stopped early
ERROR = "sweep.error"                # why it failed or was killed
CURVE = "sweep.curve"                # the ranking metric after each epoch, JSON
DUPLICATE_OF = "sweep.duplicate_of"  # a search trial whose settings this run had already
# A param, not a tag: MLflow keeps a param's first value and refuses another, so the first process to
# log it decides how the run ends (FINISHED, FAILED or KILLED), and every other writer learns it lost.
ENDED = "sweep.ended"
# The parent run.
OWNER = "sweep.owner"                # the sweep process that last started it
PROVISIONAL = "sweep.provisional"    # flag: made as a candidate for the sweep's one parent run, and
PARENT_STATE = "sweep.parent"        # a param, written once: the candidate KEPT, or WITHDRAWN (then deleted)
KEPT, WITHDRAWN = "kept", "withdrawn"
NOTE = "sweep.outcome"               # why it is not FINISHED

# The experiment, for the MLflow UI: its mode (Model training, not GenAI) and a saved view of its runs.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
RUNS_VIEW = "sweep-runs"
VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"
QUESTION = "sweep.question"          # a logged model: the best agent of this grid or search (`sweep ui`)

# MLflow search filters of a sweep's runs, e.g. mlflow.search_runs(filter_string=TRAINING_RUNS).
TRAINING_RUNS = f"tags.`{KIND}` = '{TRAIN}'"
PARENT_RUNS = f"tags.`{KIND}` = '{PARENT}'"

DEFAULT_LEASE_SECONDS = 60.0
MAX_TAG = 7900                       # MLflow keeps up to 8000 characters of a tag value

# What the queue reads of every training run (QueueView) and the read side of a finished one.
QUEUE_TAGS = (KEY, HEARTBEAT, SESSION, ERROR, DIVERGED, HOLDER, LEASE, PRUNED, SEARCH, TRIAL, DUPLICATE_OF)
RESULT_TAGS = (KEY, GRIDS, DIVERGED, PRUNED, DUPLICATE_OF, SEARCH, TRIAL, CURVE)

# --- the one vocabulary --------------------------------------------------------------------------

# A key's state in the queue.
PENDING, RUNNING, FAILED, DONE = "pending", "running", "failed", "done"
STATES = (PENDING, RUNNING, FAILED, DONE)
# What became of a run, in every report of it (the summary, `status`, `best`, the report, a search's
# trials): it finished as done, diverged, stopped (early) or duplicate (a search trial whose settings a
# finished run had: not trained again), or it failed; a worker whose claim found it done or held
# elsewhere skipped it, one whose lease another process ended lost it; a run that adaptive seeds did not
# need (its questions were settled without it) is spared; any other run never tracked is missing.
FINISHED_OUTCOMES = ("done", "diverged", "stopped", "duplicate")
OUTCOMES = (*FINISHED_OUTCOMES, "failed", "skipped", "lost", "spared", "missing")


def objective(validation) -> str:
    """The metric that ranks a run (and that early stopping and searches compare): its validation
    error when it holds images out (`validation` > 0, as a number or a logged param), else its test error."""
    try:
        held_out = float(validation or 0) > 0
    except (TypeError, ValueError):
        held_out = False
    return "val_error" if held_out else "test_error"


# --- encodings -------------------------------------------------------------------------------------

def flag(value: bool) -> str:
    return "true" if value else "false"


def is_set(text: Optional[str]) -> bool:
    return text == "true"


def seconds(text: Optional[str], default: float = 0.0) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def encode_curve(values: Iterable[float]) -> str:
    return json.dumps([round(v, 6) if math.isfinite(v) else None for v in values])


def decode_curve(text: Optional[str]) -> tuple:
    """The per-epoch values of a curve tag (NaN where an epoch had none); () for none or a tag edited
    beyond reading."""
    if not text:
        return ()
    try:
        values = json.loads(text)
        return tuple(math.nan if v is None else float(v) for v in values)
    except (ValueError, TypeError):
        return ()


def decode_grids(text: Optional[str]) -> tuple:
    return tuple(text.split(",")) if text else ()


def decode_trial(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def setting(name: str, text: str):
    """A setting's value from its logged param (RunConfig.as_params, written as str())."""
    kind = SETTING_TYPES[name]
    return int(float(text)) if kind == "int" else float(text) if kind == "float" else text


def setting_column(name: str, texts) -> list:
    """A setting's values from the logged params of many runs (None where a run has none, or one that
    is not a value of the setting)."""
    values = {}  # a sweep's runs share a few values of each setting: each text is decoded once
    for text in set(texts):
        try:
            values[text] = None if text is None else setting(name, text)
        except ValueError:
            values[text] = None
    return [values[text] for text in texts]


def settings(params: dict) -> dict:
    """The run's settings among its logged params, typed."""
    return {name: setting(name, params[name]) for name in SETTING_NAMES if name in params}


# --- writing ---------------------------------------------------------------------------------------

def claim_tags(*, parent_run_id: str, key: str, grids: Iterable[str], sweep: str, session: str, attempt: int,
               holder: str, now: float, lease: float, search: str = "", trial: int = -1) -> dict:
    """A training run's tags as its claim creates it."""
    tags = {PARENT_RUN: parent_run_id, KIND: TRAIN, KEY: key, GRIDS: ",".join(grids), SWEEP: sweep,
            SESSION: session, ATTEMPT: str(attempt), HOLDER: holder, LEASE: f"{lease:g}", **heartbeat(now)}
    if search:
        tags.update({SEARCH: search, TRIAL: str(trial)})
    return tags


def heartbeat(now: float) -> dict:
    return {HEARTBEAT: f"{now:.3f}"}


def ending(diverged: bool, stopped: bool) -> dict:
    """How a trained run ended."""
    return {DIVERGED: flag(diverged), PRUNED: flag(stopped)}


def ended(status: str) -> dict:
    """The params that commit a training run's ending (before its status is set)."""
    return {ENDED: status}


def error(text: str) -> dict:
    return {ERROR: text[-MAX_TAG:]}


def curve(values: Iterable[float]) -> dict:
    return {CURVE: encode_curve(values)}


def duplicate(original: "Attempt") -> dict:
    """A trial that records a finished run's result instead of training its settings again."""
    return {DUPLICATE_OF: original.run_id, CURVE: encode_curve(original.curve), **ending(original.diverged,
                                                                                         original.stopped)}


def parent_tags(sweep: str, owner: str) -> dict:
    """A parent run's tags as its creator makes it: provisional until kept."""
    return {KIND: PARENT, SWEEP: sweep, OWNER: owner, PROVISIONAL: flag(True)}


def kept() -> dict:
    """A kept parent run's tags (its PARENT_STATE param says so first)."""
    return {PROVISIONAL: flag(False)}


def owner(holder: str) -> dict:
    return {OWNER: holder}


def note(text: str) -> dict:
    return {NOTE: text[-MAX_TAG:]}


# --- reading ---------------------------------------------------------------------------------------

class Attempt(NamedTuple):
    """One MLflow run of a sweep, decoded: a training run's attempt at its key, or the parent run.
    (A named tuple: a reader decodes one per run of the experiment, tens of thousands at a time.)"""
    run_id: str
    status: str                   # RUNNING, FINISHED, FAILED or KILLED
    start_time: int = 0           # ms since the epoch
    end_time: Optional[int] = None
    name: str = ""
    kind: str = ""
    key: str = ""
    session: str = ""
    holder: str = ""
    heartbeat: float = 0.0        # s since the epoch, 0 when none
    lease: float = DEFAULT_LEASE_SECONDS
    error: str = ""
    diverged: bool = False
    stopped: bool = False
    search: str = ""
    trial: Optional[int] = None
    grids: tuple = ()
    duplicate_of: str = ""
    curve: tuple = ()
    owner: str = ""
    deleted: bool = False
    provisional: bool = False     # a parent run not (yet) kept: a candidate, or withdrawn

    @property
    def lease_until(self) -> float:
        return self.heartbeat + self.lease

    @property
    def outcome(self) -> str:
        """What became of it (OUTCOMES) once it ended; while RUNNING, or KILLED, its status in lower case."""
        if self.status == "FINISHED":
            return ("duplicate" if self.duplicate_of else "diverged" if self.diverged else
                    "stopped" if self.stopped else "done")
        return "failed" if self.status == "FAILED" else self.status.lower()


def attempt(run_id: str, status: str, start_time: Optional[int] = None, end_time: Optional[int] = None,
            name: str = "", tags: Optional[dict] = None, deleted: bool = False,
            params: Optional[dict] = None) -> Attempt:
    """A run from its attributes and its tags (a mapping of tag name to value; absent tags may be
    missing), and for a parent run its params."""
    tags = tags or {}
    get = tags.get
    return Attempt(run_id, status, start_time or 0, end_time, name or "", get(KIND) or "", get(KEY) or "",
                   get(SESSION) or "", get(HOLDER) or "", seconds(get(HEARTBEAT)),
                   seconds(get(LEASE), DEFAULT_LEASE_SECONDS), get(ERROR) or "", is_set(get(DIVERGED)),
                   is_set(get(PRUNED)), get(SEARCH) or "", decode_trial(get(TRIAL)), decode_grids(get(GRIDS)),
                   get(DUPLICATE_OF) or "", decode_curve(get(CURVE)), get(OWNER) or "", deleted,
                   is_set(get(PROVISIONAL)) and (params or {}).get(PARENT_STATE) != KEPT)


def decode(row) -> Attempt:
    """An Attempt from a store's run row (queue.base.RunRow)."""
    return attempt(row.run_id, row.status, row.start_time, row.end_time, row.name, row.tags, row.deleted, row.params)
