"""GPU slots: every live run holds one GPU to itself, whichever worker process it runs in.

A slot is an exclusive lock (filelock) on a per-GPU lock file of this host, so the pool works across
loky, dask or ray worker processes alike, and a slot is freed when its holder exits or dies.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional


def gpu_count() -> int:
    """This host's GPUs. Importing torch takes seconds, so where no NVIDIA driver is loaded (Linux
    shows it in /proc) the answer is 0 without asking torch."""
    if sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_jobs(gpus: int, cores: int) -> int:
    """One worker per GPU when there are several, else one per core."""
    return gpus if gpus >= 2 else max(1, cores)


def threads_per_worker(jobs: int, cores: int) -> int:
    """Torch threads per worker, so that workers x threads does not exceed the cores."""
    return max(1, cores // max(1, jobs))


@dataclass(frozen=True)
class GpuPool:
    """`count` GPU slots guarded by lock files in `lock_dir` (injectable for tests)."""
    count: int
    lock_dir: Optional[str] = None  # default: one folder per user in the system temp folder
    poll_seconds: float = 0.05

    @property
    def folder(self) -> str:
        return self.lock_dir or os.path.join(tempfile.gettempdir(), f"mnist-sweep-gpus-{os.getuid()}")

    @contextlib.contextmanager
    def acquire(self) -> Iterator[int]:
        """Hold a free GPU index until the block ends; waits while every GPU is taken."""
        from filelock import FileLock, Timeout

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        while True:
            for index in range(self.count):
                lock = FileLock(os.path.join(self.folder, f"gpu{index}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    yield index
                finally:
                    lock.release()
                return
            time.sleep(self.poll_seconds)
