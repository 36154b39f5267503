import time

import pytest
from joblib import Parallel, delayed

from sweep.execute.devices import GpuPool, default_jobs, threads_per_worker


def test_jobs_and_threads_never_oversubscribe():
    assert default_jobs(gpus=4, cores=16) == 4
    assert default_jobs(gpus=1, cores=2) == 2
    assert default_jobs(gpus=0, cores=2) == 2
    for jobs in range(1, 9):
        for cores in (1, 2, 8, 16):
            assert threads_per_worker(jobs, cores) >= 1
            if jobs <= cores:
                assert jobs * threads_per_worker(jobs, cores) <= cores


def _hold(pool, seconds):
    with pool.acquire() as gpu:
        start = time.monotonic()
        time.sleep(seconds)
        return gpu, start, time.monotonic()


@pytest.mark.system
def test_four_fake_gpus_never_shared_by_live_runs(tmp_path):
    pool = GpuPool(count=4, lock_dir=str(tmp_path), poll_seconds=0.01)
    # Uneven run times make runs finish out of order: index modulo 4 would put two on one GPU.
    durations = [0.05, 0.4, 0.1, 0.3, 0.05, 0.2, 0.15, 0.05, 0.3, 0.1, 0.05, 0.25]
    spans = Parallel(n_jobs=6, backend="loky")(delayed(_hold)(pool, d) for d in durations)
    assert {gpu for gpu, _, _ in spans} <= {0, 1, 2, 3}
    for gpu in range(4):
        mine = sorted((s, e) for g, s, e in spans if g == gpu)
        assert all(prev_end <= start for (_, prev_end), (start, _) in zip(mine, mine[1:])), mine
    # six workers over four GPUs: some had to wait, and all four GPUs were used
    assert len({gpu for gpu, _, _ in spans}) == 4
