"""A thin layer over joblib: run jobs in parallel on loky, dask or ray, hand back each outcome.

No cluster code of our own: dask goes through joblib's dask backend on a `dask.distributed`
client, ray through `ray.util.joblib`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from joblib import Parallel, delayed, parallel_config
from joblib.parallel import get_active_backend

from .errors import SweepError
from .worker import Job, Outcome, execute

BACKENDS = ("loky", "dask", "ray")


class BackendError(SweepError):
    """The backend cannot be started or reached."""


def is_remote_backend(backend: str) -> bool:
    return backend != "loky"


@contextlib.contextmanager
def backend_session(backend: str, address: Optional[str] = None) -> Iterator[None]:
    """Connect to the engine for the time of a sweep: a dask scheduler or a ray cluster."""
    if backend == "loky":
        yield
        return
    if backend == "dask":
        try:
            from dask.distributed import Client
        except ImportError:
            raise BackendError("the dask backend needs dask.distributed: pip install 'mnist-sweep[dask]'") from None
        try:
            client = Client(address, timeout="20s") if address else Client()
        except Exception as exc:  # OSError/TimeoutError from distributed
            raise BackendError(f"cannot reach the dask scheduler at {address}: {exc}") from None
        try:
            yield
        finally:
            client.close()
        return
    if backend == "ray":
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
        return
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


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

    def __init__(self, jobs: list[Job], n_jobs: int, backend: str = "loky"):
        self.jobs, self.n_jobs, self.backend = jobs, n_jobs, backend
        self.crash: Optional[str] = None

    def __iter__(self) -> Iterator[Outcome]:
        batches = [[job] for job in self.jobs] if self.n_jobs == 1 else [self.jobs]
        with parallel_config(backend=self.backend, n_jobs=max(2, self.n_jobs) if self.n_jobs > 0 else self.n_jobs):
            # ray's joblib backend cannot stream results: its outcomes all arrive at the end
            streams = getattr(get_active_backend()[0], "supports_return_generator", False)
            for batch in batches:
                results = None
                try:
                    results = Parallel(return_as="generator_unordered" if streams else "list")(
                        delayed(execute)(job) for job in batch)
                    for job_outcomes in results:
                        yield from job_outcomes
                except Exception as exc:
                    self.crash = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    return
                finally:
                    if hasattr(results, "close"):
                        results.close()  # the consumer stopped early: joblib stops the round's workers
