"""MNIST's four IDX files: where they are, whether they are whole, and their bytes as numpy arrays.
No torch here: a sweep's parent process checks the files without loading the tensors."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

ENV_VAR = "MNIST_DATA"
DEFAULT_DIR = "data"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_MAGIC, LABEL_MAGIC = 0x803, 0x801  # IDX: unsigned bytes, 3 or 1 dimensions


class MnistDataMissing(RuntimeError):
    """The IDX files are not in the data folder and could not be downloaded."""


class MnistDataError(ValueError):
    """An IDX file is there but broken: truncated, wrong magic number or dimensions, counts disagree."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve()


def _read_header(path: Path) -> tuple[int, tuple[int, ...]]:
    """(magic, dims) of an IDX file; MnistDataError if the header is cut short."""
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            raise MnistDataError(f"{path}: file is empty" if not head else f"{path}: truncated header")
        magic = struct.unpack(">I", head)[0]
        ndim = magic & 0xFF
        dims = f.read(4 * ndim)
    if magic >> 8 != 0x08 or ndim == 0:
        raise MnistDataError(f"{path}: bad magic number 0x{magic:08x}, not an IDX file of unsigned bytes")
    if len(dims) < 4 * ndim:
        raise MnistDataError(f"{path}: truncated header")
    return magic, struct.unpack(f">{ndim}I", dims)


def check_idx(path: Path, magic: int) -> tuple[int, ...]:
    """The dims of an MNIST IDX file whose header, dimensions and size are right, without reading data."""
    found, dims = _read_header(path)
    kind = "images" if magic == IMAGE_MAGIC else "labels"
    if found != magic:
        raise MnistDataError(f"{path}: {len(dims)} dimensions (magic number 0x{found:08x}); MNIST {kind} "
                             f"have {magic & 0xFF} (0x{magic:08x})")
    if kind == "images" and dims[1:] != (28, 28):
        raise MnistDataError(f"{path}: images are {' x '.join(map(str, dims[1:]))}, expected 28 x 28")
    expected = 4 + 4 * len(dims) + int(np.prod(dims))
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "too long"
        raise MnistDataError(f"{path}: {what}: {size} bytes where its header says {expected}")
    if dims[0] == 0:
        raise MnistDataError(f"{path}: holds no {kind}")
    return dims


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A checked MNIST IDX file as a uint8 array of its dims."""
    dims = check_idx(path, magic)
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def check_files(folder: Path) -> None:
    for images, labels in (FILES[:2], FILES[2:]):
        n_images = check_idx(folder / images, IMAGE_MAGIC)[0]
        n_labels = check_idx(folder / labels, LABEL_MAGIC)[0]
        if n_images != n_labels:
            raise MnistDataError(f"{folder}: {images} holds {n_images} images but {labels} "
                                 f"holds {n_labels} labels")


def _has_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _download(root: Path) -> None:
    """torchvision's download of the four files into root/MNIST/raw, made in a temporary folder and moved
    into place whole: a download that fails leaves nothing behind, and prints nothing."""
    import contextlib
    import io
    import shutil
    import tempfile

    from torchvision.datasets import MNIST

    with tempfile.TemporaryDirectory(prefix="mnist-download-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                MNIST(tmp, train=train, download=True)
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.move(str(Path(tmp) / "MNIST" / "raw" / name), raw / name)


def _reason(exc: Exception) -> str:
    """A failed download in a few words: torchvision's message spans lines, one per mirror it tried."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    causes = [line for line in lines if line.startswith("<") or "error" in line.lower()]
    return lines[0].rstrip(":") + (f": {causes[-1]}" if causes and causes[-1] != lines[0] else "")


def find_mnist(root: Path, download: bool = False) -> Path:
    """The folder that holds the four IDX files (root/MNIST/raw or root), downloaded if allowed."""
    for folder in (root / "MNIST" / "raw", root):
        if _has_files(folder):
            return folder
    why = "downloading is turned off"
    if download:
        try:
            _download(root)
            return root / "MNIST" / "raw"
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError offline
            why = f"the download failed ({_reason(exc)})"
    raise MnistDataMissing(
        f"MNIST not found in {root}: expected the four IDX files {', '.join(FILES)} "
        f"in {root / 'MNIST' / 'raw'} or in {root} itself, and {why}. "
        f"Copy (uncompressed) files there, or point --data-dir or ${ENV_VAR} at a folder that has them."
    )


def check_mnist(data_dir=None, download: bool = False) -> Path:
    """The folder holding the four IDX files, their headers and sizes checked without reading pixels.
    MnistDataMissing if they are absent (and not downloaded), MnistDataError if one is broken."""
    folder = find_mnist(resolve_data_dir(data_dir), download)
    check_files(folder)
    return folder
