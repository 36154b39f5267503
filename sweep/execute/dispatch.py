"""A thin layer over joblib: run jobs in parallel on loky, dask or ray, hand back each outcome.

No cluster code of our own: dask goes through joblib's dask backend on a `dask.distributed`
client, ray through `ray.util.joblib`. Local (loky) workers can be started before the first round,
each loading what its job needs while the sweep's process opens the store (worker.warm_up); on a
local store their requests are made by the sweep's process (tracking.relay): they never import MLflow.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import sys
import threading
import warnings
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit

from joblib import Parallel, delayed, parallel_config
from joblib.parallel import get_active_backend

from ..errors import SweepError
from ..interrupts import deferred
from .settings import BACKENDS
from .worker import Job, Outcome, execute, warm_up

KNOCK_SECONDS = 5      # is anything listening at the address at all
CONNECT_SECONDS = 10   # for a dask scheduler that listens to answer


class BackendError(SweepError):
    """The backend cannot be started or reached."""


def is_remote_backend(backend: str) -> bool:
    return backend != "loky"


@contextlib.contextmanager
def backend_session(backend: str, address: Optional[str] = None) -> Iterator[None]:
    """Connect to the engine for the time of a sweep: a dask scheduler or a ray cluster.

    Enter it before writing anything to the tracking store: a cluster that cannot be reached is a
    BackendError within seconds, and the store is left as it was."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "loky":
        yield
        return
    if address:
        _check_listening(backend, address)
    if backend == "dask":
        try:
            from dask.distributed import Client
        except ImportError:
            raise BackendError("the dask backend needs dask.distributed: pip install 'mnist-sweep[dask]'") from None
        try:
            client = Client(address, timeout=f"{CONNECT_SECONDS}s") if address else Client()
        except Exception as exc:  # OSError/TimeoutError from distributed
            raise BackendError(f"cannot reach the dask scheduler at {address}: {exc}") from None
        try:
            yield
        finally:
            client.close()
        return
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError:
        raise BackendError("the ray backend needs ray: pip install 'mnist-sweep[ray]'") from None
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    except Exception as exc:
        where = address or "a new local one"
        raise BackendError(f"cannot start or reach the ray cluster at {where}: {exc}") from None
    register_ray()
    try:
        yield
    finally:
        ray.shutdown()


def _check_listening(backend: str, address: str) -> None:
    """Knock on HOST:PORT once, briefly: ray would wait minutes for a cluster that is not there."""
    where = f"the {'dask scheduler' if backend == 'dask' else 'ray cluster'} at {address}"
    split = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = split.hostname, split.port
    except ValueError:
        raise BackendError(f"cannot reach {where}: not HOST:PORT") from None
    if split.scheme not in ("tcp", "tls", "ray") or not host or port is None:
        return  # auto, local, inproc://, ucx://...: the engine's own checks apply
    try:
        socket.create_connection((host, port), timeout=KNOCK_SECONDS).close()
    except OSError as exc:
        reason = f"no answer within {KNOCK_SECONDS} s" if isinstance(exc, TimeoutError) else exc.strerror or exc
        hint = "dask scheduler" if backend == "dask" else "ray start --head"
        raise BackendError(f"cannot reach {where} ({reason}); start it ({hint}) or check --address") from None


class JoblibPool:
    """The sweep's workers through joblib: loky on this machine, or a dask or ray cluster."""

    def __init__(self, backend: str = "loky"):
        self.backend, self.used = backend, False
        self.executor_args: dict = {}   # loky's: each worker's warm-up
        self._starting = None
        self._relay = None              # the local workers' store requests, made by this process

    def start(self, n_jobs: int, data_dir: Optional[str], device: str) -> None:
        """Start the local workers for a first round of `n_jobs` jobs now, each loading what its job
        needs (worker.warm_up) while this process opens the store; the rounds run on them (one pool:
        the same size and warm-up). A pool has two workers at least: with one job, the second waits."""
        if self.backend != "loky":
            return
        from joblib.externals.loky.backend.context import get_context

        _start_resource_tracker_deaf_to_hangups()
        self.used = True
        loky = get_context("loky")
        self.executor_args = {"initializer": warm_up,
                              "initargs": (data_dir, device, loky.Semaphore(n_jobs), loky.Semaphore(0))}
        # A Ctrl-C inside loky's start leaves its executor unable to shut down: it acts once started.
        with deferred(), parallel_config(backend="loky", n_jobs=max(2, n_jobs), **self.executor_args):
            self._starting = Parallel(return_as="generator_unordered", max_nbytes=None)(
                delayed(int)() for _ in range(max(2, n_jobs)))  # a task each: loky starts its workers for them

    def round(self, jobs: list[Job], n_jobs: int) -> "Round":
        if self.backend == "loky":
            _start_resource_tracker_deaf_to_hangups()
        self.used = True
        if self._starting is not None:  # the started workers are ready (or the round says why not)
            starting, self._starting = self._starting, None
            with contextlib.suppress(Exception):
                for _ in starting:
                    pass
        jobs = [self._relayed(job) for job in jobs]
        return Round(jobs, n_jobs, self.backend, self.executor_args, self._relay.drain if self._relay else None)

    def _relayed(self, job: Job) -> Job:
        """The job with its store as a local worker reaches it: through this process (tracking.relay)."""
        from ..tracking.location import local_path
        from ..tracking.mlflow_store import MlflowStore
        from ..tracking.relay import Relay

        # A local SQLite store's requests take milliseconds; a server's may retry for minutes, and
        # each worker's wait for its own is better than every worker's for one.
        if self.backend != "loky" or not isinstance(job.store, MlflowStore) or local_path(job.store.uri) is None:
            return job
        if self._relay is None or self._relay.store.uri != job.store.uri:
            self._close_relay()
            try:
                self._relay = Relay(MlflowStore(job.store.uri))  # as a worker would open it
            except (OSError, ValueError):
                return job  # no such socket here: the worker opens the store itself
        return dataclasses.replace(job, store=self._relay.worker_store())

    def _close_relay(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()

    def close(self) -> None:
        """Stop the local worker processes that joblib keeps for reuse, so that a finished sweep
        leaves no process behind (holding its output open, or cleaning up after it at exit)."""
        if self._starting is not None:  # no round ran: the workers' start-up tasks end with them, unsaid
            starting, self._starting = self._starting, None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                starting.close()
        if self.backend == "loky" and self.used:
            from joblib.externals.loky import get_reusable_executor

            executor = get_reusable_executor(reuse=True)  # the pool the rounds ran on
            try:
                if hasattr(executor, "terminate"):
                    executor.terminate(kill_workers=True)  # joblib's: also removes its temporary folder
                else:
                    executor.shutdown(kill_workers=True)
            finally:
                self._close_relay()  # its workers are stopped: no request is left to make


# A Ctrl-C while the sweep's process exits can cut short the finalizers that give the tracker back the
# executor's locks; the tracker then removes them itself, as it should, and would also print a warning
# of three lines about them: one line is the whole answer to a Ctrl-C.
QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


def _start_resource_tracker_deaf_to_hangups() -> None:
    """loky's resource tracker (one process beside the workers) ignores Ctrl-C and SIGTERM but not
    SIGHUP: a terminal that hangs up signals the whole process group, the tracker dies with it, and
    the one loky starts next prints a traceback for every file it never registered. Started while
    SIGHUP is blocked, the tracker inherits the block; here a SIGHUP meanwhile waits, then acts.
    It is started with QUIET_TRACKER among its warning options (loky passes sys.warnoptions on as -W)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return
    from joblib.externals.loky.backend import resource_tracker

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    sys.warnoptions.append(QUIET_TRACKER)
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions.remove(QUIET_TRACKER)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Round:
    """One round of jobs through joblib: iterate it for each run's outcome as it arrives.

    Runs never train in the sweep's own process (joblib runs `n_jobs=1` in-process, where a run that
    kills its process would end the sweep): one worker at a time is one job at a time on a pool.
    `execute` catches every error of a run itself, so an exception from joblib is the engine's: a
    worker process that died (loky's TerminatedWorkerError, dask's KilledWorker, ray's worker errors).
    The round then ends early and `crash` says what the engine said. An exception raised by the
    consumer of the outcomes (Ctrl-C, a closed stdout) is not a crash: it propagates, and joblib
    stops the round's workers.
    """

    def __init__(self, jobs: list[Job], n_jobs: int, backend: str = "loky", executor_args: Optional[dict] = None,
                 drain: Optional[Callable[[], None]] = None):
        self.jobs, self.n_jobs, self.backend = jobs, n_jobs, backend
        self.executor_args = executor_args or {}
        self.drain = drain  # once the round's workers are stopped: their last store request made (Relay.drain)
        self.crash: Optional[str] = None

    def __iter__(self) -> Iterator[Outcome]:
        batches = [[job] for job in self.jobs] if self.n_jobs == 1 else [self.jobs]
        with parallel_config(backend=self.backend, n_jobs=max(2, self.n_jobs) if self.n_jobs > 0 else self.n_jobs,
                             **self.executor_args):
            # ray's joblib backend cannot stream results: its outcomes all arrive at the end
            streams = getattr(get_active_backend()[0], "supports_return_generator", False)
            for batch in batches:
                results = None
                try:
                    results = Parallel(return_as="generator_unordered" if streams else "list", max_nbytes=None)(
                        delayed(execute)(job) for job in batch)
                    for job_outcomes in results:
                        yield from job_outcomes
                except Exception as exc:
                    self.crash = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    return
                finally:
                    if hasattr(results, "close"):
                        results.close()  # the consumer stopped early: joblib stops the round's workers
                    if self.drain is not None:
                        self.drain()
