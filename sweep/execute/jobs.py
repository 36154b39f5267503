"""Which runs train together: one job per run, or same-shape runs fused into one batched model, the
most expensive jobs first."""
from __future__ import annotations

from mnist_core.config import DEFAULT_CHUNK_SIZE, group_key

from ..spec import PlannedRun
from .settings import ENGINES


def expected_cost(run: PlannedRun) -> float:
    """Relative cost of a run: epochs x weights (the arithmetic of a pass scales with them)."""
    c = run.config
    return c.epochs * (784 * c.width + (c.depth - 1) * c.width * c.width + 10 * c.width)


def plan_jobs(runs: list[PlannedRun], engine: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
              workers: int = 1) -> list[tuple]:
    """Runs per job, the most expensive jobs first so that the slowest does not start last:
    each run alone (solo), or same-shape groups in chunks of at most `chunk_size` (fused). A fused
    job that would cost more than a worker's share of the whole (of `workers`) is halved until none
    does, or it is one run: a smaller model costs a little more per network, a waiting core all of its time."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "solo" or chunk_size < 2:
        jobs = [(r,) for r in runs]
    else:
        groups: dict[tuple, list[PlannedRun]] = {}
        for run in runs:
            groups.setdefault(group_key(run.config), []).append(run)
        jobs = []
        for members in groups.values():
            n_chunks = -(-len(members) // chunk_size)
            jobs += _chunks(members, n_chunks)
        share = sum(map(job_cost, jobs)) / max(1, workers)
        while workers > 1 and jobs:
            largest = max(jobs, key=job_cost)
            if len(largest) < 2 or job_cost(largest) <= share:
                break
            jobs.remove(largest)
            jobs += _chunks(list(largest), 2)
    return sorted(jobs, key=job_cost, reverse=True)


def job_cost(job: tuple) -> float:
    return sum(expected_cost(r) for r in job)


def _chunks(members: list, n_chunks: int) -> list[tuple]:
    """`members` in `n_chunks` near-equal chunks, in order."""
    base, extra = divmod(len(members), n_chunks)
    chunks, start = [], 0
    for i in range(n_chunks):
        size = base + (i < extra)
        chunks.append(tuple(members[start:start + size]))
        start += size
    return chunks
