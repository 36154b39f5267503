import gc
import mmap
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms
from torchvision.datasets import MNIST

from mnist_core import MnistDataError, MnistDataMissing, check_mnist, load_mnist, normalise
from mnist_core.data import FILES, HUGE_PAGE, MEAN, STD, VALIDATION_SEED, empty_in_huge_pages, holdout, resolve_data_dir

from conftest import make_mnist_dir, write_idx


def test_tensors_match_torchvision_totensor_normalize(tiny_dir, tiny_data):
    dataset = MNIST(str(tiny_dir), train=True,
                    transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    for i in (0, 7, len(dataset) - 1):
        image, label = dataset[i]
        assert torch.allclose(tiny_data.train_x[i], image.flatten(), atol=1e-6)
        assert tiny_data.train_y[i].item() == label
    assert tiny_data.train_x.shape == (320, 784) and tiny_data.test_x.shape == (160, 784)
    assert tiny_data.train_x.dtype == torch.float32 and tiny_data.train_y.dtype == torch.int64
    assert tiny_data.val_x is None and tiny_data.val_y is None


def test_float64_holds_the_same_images(tiny_data, tiny_data64):
    assert tiny_data64.dtype == torch.float64 and tiny_data64.train_y.dtype == torch.int64
    assert torch.allclose(tiny_data64.train_x, tiny_data.train_x.double(), atol=1e-6)
    assert torch.equal(tiny_data64.test_y, tiny_data.test_y)


def test_normalise_takes_any_leading_shape_of_0_255_values():
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    flat = normalise(images.astype(np.uint8))
    assert flat.shape == (2, 784) and flat.dtype == torch.float32
    assert torch.equal(normalise(torch.tensor(images, dtype=torch.uint8)), flat)
    assert torch.equal(normalise(images.reshape(2, 784).astype(np.float32)), flat)
    assert normalise(images[0].astype(np.uint8)).shape == (1, 784)
    assert normalise(images.astype(np.uint8), torch.float64).dtype == torch.float64
    assert flat[0, 0].item() == pytest.approx((0 / 255 - 0.1307) / 0.3081)
    assert flat[0, 255].item() == pytest.approx((1 - 0.1307) / 0.3081)


def test_a_read_only_array_is_normalised_without_a_warning():
    images = (np.arange(784) % 256).astype(np.uint8)
    images.flags.writeable = False  # as MLflow hands a pyfunc model its input
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(normalise(images), normalise(images.copy()))
    assert not images.flags.writeable  # the caller's array is left as it was


def test_loaded_once_per_process_device_and_dtype(tiny_dir):
    narrow = load_mnist(tiny_dir, "cpu", download=False)
    wide = load_mnist(tiny_dir, "cpu", download=False, dtype=torch.float64)
    assert load_mnist(tiny_dir, "cpu", download=False) is narrow and narrow.dtype == torch.float32
    assert load_mnist(tiny_dir, "cpu", download=False, dtype=torch.float64) is wide and wide.dtype == torch.float64


def test_flat_folder_of_idx_files(tmp_path, tiny_data):
    flat = make_mnist_dir(tmp_path / "flat", flat=True)
    data = load_mnist(flat, "cpu", download=False)
    assert torch.equal(data.train_x, tiny_data.train_x)
    assert check_mnist(flat) == flat.resolve()


def test_check_mnist_finds_the_files_without_reading_pixels(tiny_dir, monkeypatch):
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: pytest.fail("check_mnist read the pixels"))
    assert check_mnist(tiny_dir) == (tiny_dir / "MNIST" / "raw").resolve()
    monkeypatch.setenv("MNIST_DATA", str(tiny_dir))
    assert check_mnist() == (tiny_dir / "MNIST" / "raw").resolve()


@pytest.mark.system
def test_common_path_does_not_import_torchvision(tiny_dir):
    code = ("import sys, mnist_core; mnist_core.check_mnist(sys.argv[1]); "
            "mnist_core.load_mnist(sys.argv[1], download=False); print('torchvision' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_data_dir_falls_back_to_env_then_data(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv("MNIST_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir(None) == (tmp_path / "data").resolve()


def test_missing_files_name_folder_files_and_remedy(tmp_path):
    for attempt in (lambda: load_mnist(tmp_path / "empty", download=False), lambda: check_mnist(tmp_path / "empty")):
        with pytest.raises(MnistDataMissing) as info:
            attempt()
        message = str(info.value)
        assert str((tmp_path / "empty").resolve()) in message
        assert all(name in message for name in FILES)
        assert "--data-dir" in message and "MNIST_DATA" in message


def test_a_failed_download_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def offline(self):
        print("Downloading https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(MNIST, "download", offline)
    for attempt in (lambda: load_mnist(tmp_path / "offline", download=True),
                    lambda: check_mnist(tmp_path / "offline", download=True)):
        with pytest.raises(MnistDataMissing, match="the download failed") as info:
            attempt()
        assert len(str(info.value).splitlines()) == 1
        assert "Name or service not known" in str(info.value)
        assert not (tmp_path / "offline").exists()  # no empty MNIST/raw folder left behind


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _bad_magic(path):
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])


def _empty(path):
    path.write_bytes(b"")


def _wrong_dims(path):
    write_idx(path, np.zeros((320, 27, 28), dtype=np.uint8))


def _images_as_labels(path):
    write_idx(path, np.zeros((320, 28, 28), dtype=np.uint8))


def _too_few_labels(path):
    write_idx(path, np.zeros(319, dtype=np.uint8))


def _header_only(path):
    write_idx(path, np.zeros(0, dtype=np.uint8))


def _cut_header(path):
    path.write_bytes(path.read_bytes()[:6])


@pytest.mark.parametrize("name,damage,reason", [
    ("train-images-idx3-ubyte", _truncate, "truncated: 250796 bytes where its header says 250896"),
    ("train-images-idx3-ubyte", _bad_magic, "bad magic number 0x12340803"),
    ("train-labels-idx1-ubyte", _empty, "file is empty"),
    ("t10k-images-idx3-ubyte", _wrong_dims, "images are 27 x 28, expected 28 x 28"),
    ("train-labels-idx1-ubyte", _images_as_labels, "3 dimensions .* MNIST labels have 1"),
    ("t10k-labels-idx1-ubyte", _header_only, "holds no labels"),
    ("t10k-labels-idx1-ubyte", _cut_header, "truncated header"),
])
def test_broken_files_raise_one_clear_error_naming_the_file(tmp_path, name, damage, reason):
    folder = make_mnist_dir(tmp_path / "broken", flat=True)
    damage(folder / name)
    for attempt in (check_mnist, lambda d: load_mnist(d, download=False)):
        with pytest.raises(MnistDataError, match=reason) as info:
            attempt(folder)
        assert str(folder.resolve() / name) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_image_and_label_counts_must_agree(tmp_path):
    folder = make_mnist_dir(tmp_path / "counts", flat=True)
    _too_few_labels(folder / "train-labels-idx1-ubyte")
    with pytest.raises(MnistDataError, match="train-images-idx3-ubyte holds 320 images but "
                                             "train-labels-idx1-ubyte holds 319 labels"):
        check_mnist(folder)


def test_holdout_is_one_fixed_split_disjoint_from_the_training_images(tiny_data):
    split = holdout(tiny_data, 64)
    assert holdout(tiny_data, 64) is split  # computed once per (data, size)
    assert len(split.val_x) == 64 and len(split.train_x) == 320 - 64
    assert split.test_x is tiny_data.test_x
    rows = lambda x: {tuple(r) for r in x.tolist()}
    held, kept, everything = rows(split.val_x), rows(split.train_x), rows(tiny_data.train_x)
    assert not held & kept and held | kept == everything
    order = torch.randperm(320, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    assert torch.equal(split.val_x, tiny_data.train_x[order[:64].sort().values])
    assert torch.equal(split.val_y, tiny_data.train_y[order[:64].sort().values])
    assert holdout(tiny_data, 0) is tiny_data


def test_every_run_and_seed_holds_out_the_same_images(tmp_path, tiny_data, tiny_data64):
    first = holdout(tiny_data, 32)
    torch.manual_seed(12345)  # each run seeds torch's global generator; the split must not care
    copy = load_mnist(make_mnist_dir(tmp_path / "copy", flat=True), download=False)  # same files, new object
    again = holdout(copy, 32)
    assert again is not first
    assert torch.equal(again.val_x, first.val_x) and torch.equal(again.train_y, first.train_y)
    assert torch.equal(holdout(tiny_data64, 32).val_y, first.val_y)  # and in every dtype


def test_holdout_too_big_names_both_numbers(tiny_data):
    with pytest.raises(ValueError, match="validation 400 must be less than the 320 training images"):
        holdout(tiny_data, 400)


# Whether this system can give transparent huge pages at all: on Linux without them, madvise refuses
# MADV_HUGEPAGE and the images stay in ordinary pages, as they should.
HUGE_PAGES = hasattr(mmap, "MADV_HUGEPAGE") and Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` (Linux's /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            bounds = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if bounds:
                inside = int(bounds[1], 16) <= address < int(bounds[2], 16)
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_big_tensor_is_made_in_memory_advised_for_huge_pages():
    rows = 3 * HUGE_PAGE // (4 * 784)
    tensor = empty_in_huge_pages(rows, 784, torch.float32)
    assert tensor.shape == (rows, 784) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    tensor.copy_(torch.arange(rows * 784, dtype=torch.float32).view(rows, 784))
    gc.collect()
    assert tensor[-1, -1].item() == rows * 784 - 1  # the mapping lives as long as the tensor
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert tensor.data_ptr() % HUGE_PAGE == 0
    if HUGE_PAGES:
        assert "hg" in _vm_flags(tensor.data_ptr())  # MADV_HUGEPAGE, whatever the kernel then gives
    assert empty_in_huge_pages(10, 784, torch.float64).shape == (10, 784)  # small: an ordinary tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalise_in_place_gives_the_formulas_numbers_and_leaves_its_input(dtype):
    images = torch.arange(3 * 784, dtype=dtype).view(3, 28, 28) % 256
    before = images.clone()
    expected = (images.reshape(3, 784) / 255.0 - MEAN) / STD
    assert torch.equal(normalise(images, dtype), expected) and torch.equal(images, before)
    out = torch.empty(3, 784, dtype=dtype)
    assert normalise(images.to(torch.uint8), dtype, out=out) is out and torch.equal(out, expected)
    with pytest.raises(ValueError, match="out must be"):
        normalise(images[:1], dtype, out=out)  # one image would fill every row


def test_the_training_images_of_real_mnist_and_of_a_holdout_sit_in_huge_page_memory(real_data_dir):
    if not HUGE_PAGES:
        pytest.skip("no transparent huge pages on this system")
    data = load_mnist(real_data_dir)
    for images in (data.train_x, holdout(data, 5000).train_x):
        assert "hg" in _vm_flags(images.data_ptr())
