"""A local worker's store requests, made by the sweep's process: the worker imports no MLflow.

The sweep's process has MLflow loaded and the store open. A local (loky) worker with a client of its
own would import MLflow, SQLAlchemy and alembic before its first request: more than a second, on the
critical path of a short sweep (docs/benchmarks.md), since the worker also imports torch and loads
MNIST. Instead, on a local SQLite store, the sweep's process serves its workers' store requests on a
socket of its own (`Relay`) and each worker sends them there (`RelayStore`): the same requests, in the
same order, from the same lease holder, so the queue's protocol is unchanged, only how a request
travels. A worker reads the store itself, with SQL, as MlflowStore does. Once the sweep's process is
gone, a worker opens the store itself, to end its runs (queue.KeepAlive). What the transport adds,
and how each case ends: docs/queue.md.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Optional

from .. import interrupts
from ..queue.base import LOCAL, Host, Query, RunRow, Store, TrackingError
from ..queue.index import index_path
from .mlflow_store import MlflowStore

REQUESTS = frozenset({"ensure_experiment", "create_run", "delete_run", "write", "set_status", "log_artifact",
                      "log_inputs"})  # a worker reads the store itself
# Made twice, these leave the store as made once (a param keeps its value, a status is set, a file
# copied again); a write's metrics would be logged twice, which only the sweep's death can cause.
REPEATABLE = REQUESTS - {"create_run"}


class Relay:
    """In the sweep's process: serves its local workers' store requests on `store`, one at a time,
    each worker over a connection of its own, until closed."""

    def __init__(self, store: MlflowStore):
        self.store = store
        self._authkey = secrets.token_bytes(32)  # only a process given it may connect
        if sys.platform.startswith("linux"):  # an abstract name: no file to leave behind, no path too long
            self._folder, address = None, f"\0sweep-relay-{secrets.token_hex(16)}"
        else:
            self._folder = tempfile.mkdtemp(prefix="sweep-relay-")  # this user's alone (mode 0700)
            address = os.path.join(self._folder, "socket")
        self._listener = Listener(address, "AF_UNIX")  # each connection proves the key in its own thread
        self._one_at_a_time = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="sweep-relay", daemon=True).start()

    def worker_store(self) -> "RelayStore":
        """The store as a worker process of this one sees it (picklable)."""
        return RelayStore(self.store.uri, self._listener.address, self._authkey)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            Client(self._listener.address, "AF_UNIX").close()  # wakes the accepting thread
        self._listener.close()
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)

    def drain(self) -> None:
        """Return once the request being made, if any, is made: called after the workers were stopped,
        so that no request of theirs is made after what follows (a stopped worker's next one is not)."""
        with self._one_at_a_time:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection = self._listener.accept()
            except OSError:
                continue  # the listener closed
            if self._closed:
                connection.close()
                return
            threading.Thread(target=self._serve, args=(connection,), name="sweep-relay-worker", daemon=True).start()

    def _serve(self, connection) -> None:
        with connection:
            try:
                deliver_challenge(connection, self._authkey)  # as Listener(authkey=...) would, but here a
                answer_challenge(connection, self._authkey)   # caller that says nothing holds up no other
            except (OSError, EOFError, AuthenticationError):
                return  # not a worker of this process
            worker = _peer(connection)
            while True:
                try:
                    message = connection.recv_bytes()
                except (OSError, EOFError):
                    return  # the worker is gone
                try:
                    method, args = pickle.loads(message)
                    if method not in REQUESTS:
                        raise TrackingError(f"not a store request: {method!r}")
                    with self._one_at_a_time:
                        if worker is not None and not _alive(worker):
                            return  # sent before the worker was stopped, which never hears: not made
                        reply = (True, getattr(self.store, method)(*args))
                except TrackingError as exc:
                    reply = (False, str(exc))
                except Exception as exc:  # noqa: BLE001 - the worker's request failed: it hears why
                    reply = (False, f"tracking store {self.store.uri} cannot be used: {type(exc).__name__}: {exc}")
                try:
                    connection.send(reply)
                except (OSError, EOFError):
                    return
                except Exception as exc:  # noqa: BLE001 - an answer that cannot be pickled: the worker hears why
                    with contextlib.suppress(OSError, EOFError):
                        connection.send((False, f"tracking store {self.store.uri}: cannot answer {method!r}: {exc}"))


def _peer(connection) -> Optional[int]:
    """The process at the other end of a local socket (Linux); None where that cannot be told."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    with socket.socket(fileno=os.dup(connection.fileno())) as end:
        pid, _, _ = struct.unpack("3i", end.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid or None


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


class _SentNothing(Exception):
    """The sweep's process is gone: the request is to be made here."""


class RelayStore(Store):
    """In a local worker: a local SQLite store, written through the sweep's process while it lives
    (Relay), else here; read here. Thread-safe: a job's training thread and its keep-alive thread
    share one connection."""

    def __init__(self, uri: str, address, authkey: bytes, host: Host = LOCAL):
        self.uri, self.address, self.authkey, self.host = uri, address, authkey, host
        self.here = MlflowStore(uri, host)  # nothing opened until a request goes to it
        self._relayed = True
        self._connection = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RelayStore({self.uri!r})"

    def __reduce__(self):  # another process connects on its own
        return RelayStore, (self.uri, self.address, self.authkey)

    @property
    def index_path(self) -> Path:
        return index_path(self.uri)

    def ensure_experiment(self, name: str) -> str:
        return self._request("ensure_experiment", name)

    def find_experiment(self, name: str) -> Optional[str]:
        return self.here.find_experiment(name)  # with SQL, without MLflow

    def create_run(self, experiment_id: str, name: str, tags: dict) -> str:
        return self._request("create_run", experiment_id, name, tags)

    def delete_run(self, run_id: str) -> None:
        self._request("delete_run", run_id)

    def write(self, run_id: str, metrics: Iterable[tuple] = (), params: Optional[dict] = None,
              tags: Optional[dict] = None) -> None:
        self._request("write", run_id, list(metrics), params, tags)

    def set_status(self, run_id: str, status: str) -> None:
        self._request("set_status", run_id, status)

    def log_artifact(self, run_id: str, path: Path) -> None:
        self._request("log_artifact", run_id, path)  # a file of this host, which the sweep's process shares

    def log_inputs(self, run_id: str, parts: Iterable) -> None:
        # as plain namespaces: the sweep's process does not import mnist_core (nor torch) to read them
        self._request("log_inputs", run_id, [SimpleNamespace(**vars(part)) for part in parts])

    def find(self, experiment_id: str, query: Query) -> list[RunRow]:
        return self.here.find(experiment_id, query)  # with SQL, without MLflow

    def after_interrupt(self, interrupt: BaseException) -> None:
        self.here.after_interrupt(interrupt)

    def _request(self, method: str, *args):
        with self._lock:
            if self._relayed:
                try:
                    with interrupts.deferred():  # a Ctrl-C waits for the answer: the connection stays in step
                        return self._relay(method, args)
                except _SentNothing:
                    self._relayed = False  # the sweep's process is gone: from now on, the store itself
        return getattr(self.here, method)(*args)

    def _relay(self, method: str, args: tuple):
        try:
            if self._connection is None:
                self._connection = Client(self.address, "AF_UNIX", authkey=self.authkey)
            self._connection.send((method, args))
        except (OSError, EOFError, AuthenticationError):
            self._connection = None
            raise _SentNothing from None
        except BaseException:  # a second Ctrl-C midway: the next request goes on a new connection
            self._drop()
            raise
        try:
            done, answer = self._connection.recv()
        except (OSError, EOFError):
            self._drop()
            if method in REPEATABLE:  # made or not, made again here it leaves the store as once
                raise _SentNothing from None
            raise TrackingError(f"tracking store {self.uri}: the sweep's process, which made this worker's "
                                f"requests, is gone (was `{method}` made? the store tells)") from None
        except BaseException:
            self._drop()
            raise
        if not done:
            raise TrackingError(answer)
        return answer

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()
