"""MNIST's IDX files, checked and read with numpy, turned once into normalised tensors per process.

Where the data lives: an explicit folder, else $MNIST_DATA, else ./data. The folder may hold
torchvision's layout (`<dir>/MNIST/raw/<files>`) or the four IDX files themselves. torchvision is
imported only to download missing files (and for `open_datasets`, the students' baseline).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .files import (ENV_VAR, FILES, IMAGE_MAGIC, LABEL_MAGIC, MnistDataError, MnistDataMissing,  # noqa: F401
                    check_files, check_idx, check_mnist, find_mnist, read_idx, resolve_data_dir)

MEAN, STD = 0.1307, 0.3081
# The validation images are the first `validation` of this fixed permutation of the training set,
# whatever the run's seed: every run with the same validation size holds out the same images.
VALIDATION_SEED = 20_251_128


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


def normalise(images, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Grey values 0-255 (uint8 or float, numpy or torch, any leading shape) -> (N, 784) normalised
    as ToTensor() + Normalize((0.1307,), (0.3081,)) would, for all images at once."""
    pixels = torch.as_tensor(images).reshape(-1, 28 * 28).to(dtype)
    return (pixels / 255.0 - MEAN) / STD


@functools.lru_cache(maxsize=4)
def _load(root: Path, device: str, download: bool, dtype: torch.dtype) -> MnistTensors:
    folder = find_mnist(root, download)
    check_files(folder)
    arrays = [read_idx(folder / name, IMAGE_MAGIC if "images" in name else LABEL_MAGIC) for name in FILES]
    train_x, train_y, test_x, test_y = arrays
    dev = torch.device(device)
    return MnistTensors(
        train_x=normalise(train_x, dtype).to(dev),
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
    return MnistTensors(data.train_x[kept], data.train_y[kept], data.test_x, data.test_y,
                        val_x=data.train_x[held], val_y=data.train_y[held])


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
