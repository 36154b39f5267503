"""MNIST's IDX files, checked and read with numpy, turned once into normalised tensors per process.

Where the data lives: an explicit folder, else $MNIST_DATA, else ./data. The folder may hold
torchvision's layout (`<dir>/MNIST/raw/<files>`) or the four IDX files themselves. torchvision is
imported only to download missing files (and for `open_datasets`, the students' baseline).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import TRAIN_SAMPLE
from .files import (  # noqa: F401
    ENV_VAR,
    FILES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    MnistDataError,
    MnistDataMissing,
    check_files,
    check_idx,
    check_mnist,
    find_mnist,
    read_idx,
    resolve_data_dir,
)

MEAN, STD = 0.1307, 0.3081
# The validation images are the first `validation` of this fixed permutation of the training set,
# whatever the run's seed: every run with the same validation size holds out the same images.
VALIDATION_SEED = 20_251_128
TRAIN_SAMPLE_SEED = 20_261_207
DIGEST_LENGTH = 8  # hex digits of a data part's digest, as short as MLflow's own dataset digests
HUGE_PAGE = 2 << 20


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so it can key a cache
class MnistTensors:
    train_x: torch.Tensor  # (60000, 784) normalised, float32 unless loaded with another dtype
    train_y: torch.Tensor  # (60000,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: Optional[torch.Tensor] = None  # held-out training images, when a run asks for them
    val_y: Optional[torch.Tensor] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.train_x.dtype


def normalise(images, dtype: torch.dtype = torch.float32, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Grey values 0-255 (uint8 or float, numpy or torch, any leading shape) -> (N, 784) normalised
    as ToTensor() + Normalize((0.1307,), (0.3081,)) would, for all images at once: in `out` (N x 784
    of `dtype`) when given, else in a new tensor; `images` itself is left as it is."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch warns about a read-only array, and MLflow hands pyfunc inputs over read-only
    pixels = torch.as_tensor(images).reshape(-1, 28 * 28)
    if out is not None and (out.shape != pixels.shape or out.dtype != dtype):
        raise ValueError(f"out must be {tuple(pixels.shape)} of {dtype}, not {tuple(out.shape)} of {out.dtype}")
    out = pixels.to(dtype, copy=True) if out is None else out.copy_(pixels)
    return out.div_(255.0).sub_(MEAN).div_(STD)  # in place: MNIST's training set is 188 MB a copy


def empty_in_huge_pages(rows: int, columns: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised (rows, columns) CPU tensor in memory that the kernel is asked to back with
    2 MiB pages (Linux's transparent huge pages, which also serve madvise mode); an ordinary one where
    that cannot be had (another OS, under 2 MiB). Why: a mini-batch gathers 64 rows spread over the
    whole training set, and with 4 KiB pages each row costs TLB misses, which made that gather one of
    the training loop's costliest steps (docs/training.md)."""
    nbytes = rows * columns * dtype.itemsize
    if not hasattr(mmap, "MADV_HUGEPAGE") or nbytes < HUGE_PAGE:
        return torch.empty(rows, columns, dtype=dtype)
    # private and anonymous (a shared mapping is shmem, which huge pages serve only if so configured);
    # the tensor keeps it alive
    buffer = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages: ordinary pages
        buffer.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE  # the first 2 MiB boundary in the mapping
    return raw[start:start + nbytes].view(dtype).view(rows, columns)


@functools.lru_cache(maxsize=4)
def _load(root: Path, device: str, download: bool, dtype: torch.dtype) -> MnistTensors:
    folder = find_mnist(root, download)
    check_files(folder)
    arrays = [read_idx(folder / name, IMAGE_MAGIC if "images" in name else LABEL_MAGIC) for name in FILES]
    train_x, train_y, test_x, test_y = arrays
    dev = torch.device(device)
    return MnistTensors(
        train_x=normalise(train_x, dtype, out=empty_in_huge_pages(len(train_x), 28 * 28, dtype)
                          if dev.type == "cpu" else None).to(dev),
        train_y=torch.from_numpy(train_y).long().to(dev),
        test_x=normalise(test_x, dtype).to(dev),
        test_y=torch.from_numpy(test_y).long().to(dev),
    )


def load_mnist(data_dir=None, device: str | torch.device = "cpu", download: bool = True,
               dtype: torch.dtype = torch.float32) -> MnistTensors:
    """Normalised MNIST tensors of `dtype` on `device`, loaded once per process and reused by every run."""
    return _load(resolve_data_dir(data_dir), str(torch.device(device)), download, dtype)


@functools.lru_cache(maxsize=8)
def holdout(data: MnistTensors, validation: int) -> MnistTensors:
    """`data` with the first `validation` images of the fixed VALIDATION_SEED permutation of its
    training set moved to val_x/val_y (both parts in their original order); `data` itself for 0."""
    if validation == 0:
        return data
    n = len(data.train_x)
    if validation >= n:
        raise ValueError(f"validation {validation} must be less than the {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held, kept = (part.sort().values.to(data.train_x.device) for part in (order[:validation], order[validation:]))
    train_x = data.train_x[kept] if data.train_x.device.type != "cpu" else torch.index_select(
        data.train_x, 0, kept, out=empty_in_huge_pages(len(kept), data.train_x.shape[1], data.dtype))
    return MnistTensors(train_x, data.train_y[kept], data.test_x, data.test_y,
                        val_x=data.train_x[held], val_y=data.train_y[held])


@functools.lru_cache(maxsize=8)
def train_sample(data: MnistTensors, size: int = TRAIN_SAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the first `size` of a fixed TRAIN_SAMPLE_SEED permutation of `data`'s
    training set, in their original order; all of it when it holds no more than `size`."""
    n = len(data.train_x)
    if n <= size:
        return data.train_x, data.train_y
    order = torch.randperm(n, generator=torch.Generator().manual_seed(TRAIN_SAMPLE_SEED))
    chosen = order[:size].sort().values.to(data.train_x.device)
    return data.train_x[chosen], data.train_y[chosen]


@dataclass(frozen=True)
class DataPart:
    """One part of MNIST that a run trains, validates or is tested on, described without its images."""
    name: str            # mnist-train, mnist-validation, mnist-test
    context: str         # training, validation, test
    digest: str          # of the IDX files' bytes (and, for a split, of which images it holds)
    source: str          # the folder holding the IDX files
    files: tuple         # (images file, labels file)
    images: int
    split: str = ""      # how the part is cut from its files, when it is not all of them


@functools.lru_cache(maxsize=16)
def _files_digest(paths: tuple, stats: tuple) -> str:
    """SHA-256 of the files' bytes, read once per process for as long as their size and mtime hold."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()


def _digest(paths: tuple, split: str = "") -> str:
    stats = tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    full = _files_digest(paths, stats)
    return (hashlib.sha256(f"{full} {split}".encode()).hexdigest() if split else full)[:DIGEST_LENGTH]


def describe_mnist(data_dir=None, validation: int = 0, train_eval: str = "full") -> tuple[DataPart, ...]:
    """The training set, the validation split when `validation` > 0 (as `holdout` cuts it), the
    training images the train numbers are measured on when train_eval "sample" takes fewer than all
    (as `train_sample` takes them) and the test set of the IDX files in `data_dir`: what a run with
    those settings was measured on."""
    folder = check_mnist(data_dir)

    def part(name, context, files, images, split=""):
        paths = tuple(str(folder / file) for file in files)
        return DataPart(name, context, _digest(paths, split), str(folder), files, images, split)

    train, test = FILES[:2], FILES[2:]
    n_train, n_test = (check_idx(folder / files[0], IMAGE_MAGIC)[0] for files in (train, test))
    if validation >= n_train:  # as holdout refuses it
        raise ValueError(f"validation {validation} must be less than the {n_train} training images")
    cut = f"of a fixed permutation (seed {VALIDATION_SEED}) of the {n_train} training images"
    trained = n_train - validation
    kept = f"all but the first {validation} {cut}" if validation else ""
    parts = [part("mnist-train", "training", train, trained, kept)]
    if validation:
        parts.append(part("mnist-validation", "validation", train, validation, f"the first {validation} {cut}"))
    if train_eval == "sample" and trained > TRAIN_SAMPLE:
        parts.append(part("mnist-train-sample", "train-evaluation", train, TRAIN_SAMPLE,
                          f"the first {TRAIN_SAMPLE} of a fixed permutation (seed {TRAIN_SAMPLE_SEED}) of the "
                          f"{trained} training images" + (f" ({parts[0].split})" if validation else "")))
    return (*parts, part("mnist-test", "test", test, n_test))


def open_datasets(root: Path, download: bool = True):
    """The (train, test) torchvision datasets of the files in, or downloaded into, `root`: the
    student's way of reading MNIST, kept for the baselines of the benchmarks."""
    from torchvision.datasets import MNIST

    folder = find_mnist(Path(root), download)

    class _Here(MNIST):
        @property
        def raw_folder(self) -> str:
            return str(folder)

    return _Here(str(root), train=True), _Here(str(root), train=False)
