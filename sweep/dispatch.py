"""A thin layer over joblib: run jobs in parallel and hand back each outcome as it arrives."""
from __future__ import annotations

from typing import Callable, Optional

from joblib import Parallel, delayed, parallel_config
from joblib.externals.loky.process_executor import TerminatedWorkerError

from .worker import Job, Outcome, execute

BACKENDS = ("loky", "dask", "ray")


def dispatch(jobs: list[Job], n_jobs: int, backend: str = "loky",
             on_outcome: Optional[Callable[[Outcome], None]] = None) -> tuple[list[Outcome], Optional[str]]:
    """Run `jobs`; return the outcomes received and, if a worker process died, what joblib said."""
    outcomes: list[Outcome] = []
    try:
        with parallel_config(backend=backend, n_jobs=n_jobs):
            for outcome in Parallel(return_as="generator_unordered")(delayed(execute)(j) for j in jobs):
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
    except TerminatedWorkerError as exc:
        return outcomes, str(exc).splitlines()[0]
    return outcomes, None
