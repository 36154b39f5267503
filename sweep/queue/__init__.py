"""The durable queue: a run's whole life, kept in the MLflow store and nowhere else.

What it owns, one module each:
- schema.py: the stored run: tag names, their encodings, the outcome vocabulary, the ranking metric
- base.py: what it stands on: a `Store` of runs and the `Host` (clock, threads, processes)
- memory.py: MLflow's semantics in memory (the store on MLflow is sweep.tracking.mlflow_store)
- index.py: the change feed, a mirror of the store that each reader reads from its own cursor
- claims.py: a key's state, its claim, the sweep's parent run
- lease.py: the claim held: heartbeats, the outcome written by its holder alone
- view.py: a process's view of every key's state, derived from the change feed

It may import the standard library, `sweep.errors` and `mnist_core.config` (schema.py, for the
settings' types); nothing of MLflow, torch or the rest of the sweep. The consistency model, what the simulation
in tests/sweep/queue explores and the guarantees that follow are in docs/queue.md.
"""
from . import schema
from .base import LOCAL, Host, Query, RunRow, Store, TrackingError
from .claims import (
           by_key,
           claim,
           count,
           end_attempt,
           end_orphaned_parent,
           end_parent,
           find_parent,
           is_live,
           key_attempts,
           key_state,
           last_errors,
           parent_run,
           session_attempts,
           states,
           tidy_parent,
)
from .index import Changes, Cursor, Index, index_path
from .lease import KeepAlive, Lease
from .memory import MemoryStore
from .schema import Attempt
from .view import QueueRead, QueueView, last_read_states, read_states

__all__ = ["schema", "LOCAL", "Host", "Query", "RunRow", "Store", "TrackingError", "by_key", "claim", "count",
           "end_attempt", "end_orphaned_parent", "end_parent", "find_parent", "is_live", "key_attempts",
           "key_state", "last_errors", "parent_run", "session_attempts", "states", "tidy_parent", "Changes", "Cursor",
           "Index", "index_path", "KeepAlive", "Lease", "MemoryStore", "Attempt", "QueueRead", "QueueView",
           "last_read_states", "read_states"]

