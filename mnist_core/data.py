"""MNIST through torchvision, turned once into normalised tensors and cached per process and device.

Where the data lives: an explicit folder, else $MNIST_DATA, else ./data. The folder may hold
torchvision's layout (`<dir>/MNIST/raw/<files>`) or the four IDX files themselves.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import MNIST

MEAN, STD = 0.1307, 0.3081
ENV_VAR = "MNIST_DATA"
DEFAULT_DIR = "data"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MnistDataMissing(RuntimeError):
    """The IDX files are not in the data folder and could not be downloaded."""


@dataclass(frozen=True)
class MnistTensors:
    train_x: torch.Tensor  # (60000, 784) float32, normalised
    train_y: torch.Tensor  # (60000,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve()


class _FlatMNIST(MNIST):
    """torchvision's MNIST reading the IDX files straight from `root` (no MNIST/raw subfolders)."""

    @property
    def raw_folder(self) -> str:
        return self.root


def _has_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def open_datasets(root: Path, download: bool = True) -> tuple[MNIST, MNIST]:
    """The (train, test) torchvision datasets found in, or downloaded into, `root`."""
    if _has_files(root / "MNIST" / "raw"):
        return MNIST(str(root), train=True), MNIST(str(root), train=False)
    if _has_files(root):
        return _FlatMNIST(str(root), train=True), _FlatMNIST(str(root), train=False)
    why = "downloading is turned off"
    if download:
        try:
            return (MNIST(str(root), train=True, download=True),
                    MNIST(str(root), train=False, download=True))
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError offline
            why = f"the download failed ({exc})"
    raise MnistDataMissing(
        f"MNIST not found in {root}: expected the four IDX files {', '.join(FILES)} "
        f"in {root / 'MNIST' / 'raw'} or in {root} itself, and {why}. "
        f"Copy (uncompressed) files there, or point --data-dir or ${ENV_VAR} at a folder that has them."
    )


def _normalise(images: torch.Tensor) -> torch.Tensor:
    # The same numbers as ToTensor() + Normalize((0.1307,), (0.3081,)), for all images at once.
    return ((images.reshape(len(images), -1).float() / 255.0) - MEAN) / STD


@functools.lru_cache(maxsize=4)
def _load(root: Path, device: str, download: bool) -> MnistTensors:
    train, test = open_datasets(root, download)
    dev = torch.device(device)
    return MnistTensors(
        train_x=_normalise(train.data).to(dev),
        train_y=train.targets.to(dev),
        test_x=_normalise(test.data).to(dev),
        test_y=test.targets.to(dev),
    )


def load_mnist(data_dir=None, device: str | torch.device = "cpu", download: bool = True) -> MnistTensors:
    """Normalised MNIST tensors on `device`, loaded once per process and reused by every run."""
    return _load(resolve_data_dir(data_dir), str(torch.device(device)), download)
