import pytest
import torch
from torchvision import transforms
from torchvision.datasets import MNIST

from mnist_core import MnistDataMissing, load_mnist
from mnist_core.data import FILES, resolve_data_dir

from conftest import make_mnist_dir


def test_tensors_match_torchvision_totensor_normalize(tiny_dir, tiny_data):
    dataset = MNIST(str(tiny_dir), train=True,
                    transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    for i in (0, 7, len(dataset) - 1):
        image, label = dataset[i]
        assert torch.allclose(tiny_data.train_x[i], image.flatten(), atol=1e-6)
        assert tiny_data.train_y[i].item() == label
    assert tiny_data.train_x.shape == (320, 784) and tiny_data.test_x.shape == (160, 784)
    assert tiny_data.train_x.dtype == torch.float32 and tiny_data.train_y.dtype == torch.int64


def test_loaded_once_per_process_and_device(tiny_dir, tiny_data):
    assert load_mnist(tiny_dir, "cpu", download=False) is tiny_data


def test_flat_folder_of_idx_files(tmp_path, tiny_data):
    flat = make_mnist_dir(tmp_path / "flat", flat=True)
    data = load_mnist(flat, "cpu", download=False)
    assert torch.equal(data.train_x, tiny_data.train_x)


def test_data_dir_falls_back_to_env_then_data(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv("MNIST_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir(None) == (tmp_path / "data").resolve()


def test_missing_files_name_folder_files_and_remedy(tmp_path):
    with pytest.raises(MnistDataMissing) as info:
        load_mnist(tmp_path / "empty", download=False)
    message = str(info.value)
    assert str((tmp_path / "empty").resolve()) in message
    assert all(name in message for name in FILES)
    assert "--data-dir" in message and "MNIST_DATA" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(MnistDataMissing, match="the download failed"):
        load_mnist(tmp_path / "offline", download=True)
