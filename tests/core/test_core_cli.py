import json
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mnist_core.cli import main as train_main
from mnist_core.predict import main as predict_main

from conftest import make_mnist_dir, tiny_digits


def one_line_error(result) -> str:
    """The single line a user's mistake gets: exit code 2 and no traceback."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_help_lists_every_setting_with_default():
    result = CliRunner().invoke(train_main, ["--help"])
    assert result.exit_code == 0
    for option in ("--lr", "--epochs", "--activation", "--depth", "--width", "--momentum", "--schedule",
                   "--gamma", "--restart-period", "--seed", "--batch-size", "--device", "--data-dir"):
        assert option in result.output
    assert re.search(r"--lr FLOAT\s+Initial learning rate of SGD \(> 0\)\.\s+\[default:\s+0\.03\]", result.output)


def test_trains_prints_epochs_and_saves_agent(tiny_dir, tmp_path, pinned_threads):
    result = CliRunner().invoke(train_main, ["--lr", "0.05", "--epochs", "2", "--data-dir", str(tiny_dir),
                                             "--out", str(tmp_path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "lr 0.05" in lines[0] and "test loss" in lines[0] and "err" in lines[0]
    assert (tmp_path / "mnist_agent.pt").exists()
    assert f"agent saved to {tmp_path / 'mnist_agent.pt'}" in result.output
    assert "val loss" not in result.output  # no validation unless asked for


def test_validation_is_printed_each_epoch(tiny_dir, tmp_path, pinned_threads):
    result = CliRunner().invoke(train_main, ["--validation", "50", "--epochs", "2", "--data-dir", str(tiny_dir),
                                             "--out", str(tmp_path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and all("val loss" in l for l in lines)


def test_validation_larger_than_the_training_set_exits_2(tiny_dir, tmp_path):
    line = one_line_error(CliRunner().invoke(train_main, ["--validation", "320", "--data-dir", str(tiny_dir),
                                                          "--out", str(tmp_path)]))
    assert "validation 320 must be less than the 320 training images" in line


@pytest.mark.parametrize("device", ["bogus", "mps"])
def test_unsupported_device_exits_2_with_one_line(device):
    line = one_line_error(CliRunner().invoke(train_main, ["--device", device]))
    assert f"unsupported device '{device}'" in line and "auto, cpu, cuda, cuda:N" in line


def test_broken_data_file_exits_2_with_one_line(tmp_path):
    folder = make_mnist_dir(tmp_path / "broken", flat=True)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"")
    line = one_line_error(CliRunner().invoke(train_main, ["--data-dir", str(folder), "--no-download"]))
    assert str(folder / "t10k-labels-idx1-ubyte") in line and "empty" in line


def test_missing_data_exits_2_with_help(tmp_path):
    result = CliRunner().invoke(train_main, ["--data-dir", str(tmp_path / "nothing"), "--no-download"])
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte" in result.output and str(tmp_path / "nothing") in result.output


def test_bad_value_exits_2():
    result = CliRunner().invoke(train_main, ["--lr", "-1"])
    assert result.exit_code == 2 and "lr must be > 0" in result.output


@pytest.mark.system
def test_python_dash_m_runs(tiny_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mnist_core", "--epochs", "1", "--data-dir", str(tiny_dir),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1" in proc.stdout


def _write_digit(path, label, dark_on_light=False, size=(84, 60)):
    images, labels = tiny_digits(200, 0)
    image = images[int(np.where(labels == label)[0][0])]
    if dark_on_light:
        image = 255 - image
    Image.fromarray(image).resize(size).save(path)


def test_predict_prints_digit_and_probabilities(tiny_dir, tmp_path, pinned_threads):
    CliRunner().invoke(train_main, ["--lr", "0.1", "--epochs", "4", "--data-dir", str(tiny_dir),
                                    "--out", str(tmp_path)])
    agent = tmp_path / "mnist_agent.pt"
    _write_digit(tmp_path / "three.png", 3, size=(28, 28))
    _write_digit(tmp_path / "seven.jpg", 7, dark_on_light=True, size=(28, 28))
    result = CliRunner().invoke(predict_main, [str(agent), str(tmp_path / "three.png"), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["digit"] == 3 and len(row["probabilities"]) == 10
    assert abs(sum(row["probabilities"]) - 1) < 1e-4
    result = CliRunner().invoke(predict_main, [str(agent), str(tmp_path / "seven.jpg"), "--dark-on-light"])
    assert result.exit_code == 0 and ": 7 " in result.output


def test_predict_any_size_and_bad_files(tiny_dir, tmp_path):
    CliRunner().invoke(train_main, ["--epochs", "1", "--data-dir", str(tiny_dir), "--out", str(tmp_path)])
    _write_digit(tmp_path / "big.png", 5, size=(300, 200))
    result = CliRunner().invoke(predict_main, [str(tmp_path / "mnist_agent.pt"), str(tmp_path / "big.png")])
    assert result.exit_code == 0 and "big.png:" in result.output
    (tmp_path / "junk.png").write_text("not an image")
    result = CliRunner().invoke(predict_main, [str(tmp_path / "mnist_agent.pt"), str(tmp_path / "junk.png")])
    assert result.exit_code == 2 and "cannot read image" in result.output


def _png_of_size(path, width, height):
    """A valid PNG header claiming width x height grey pixels (the pixels themselves are never there)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture
def agent(tiny_dir, tmp_path):
    CliRunner().invoke(train_main, ["--epochs", "1", "--data-dir", str(tiny_dir), "--out", str(tmp_path)])
    return tmp_path / "mnist_agent.pt"


def test_predict_refuses_a_decompression_bomb_in_one_line(agent, tmp_path):
    _png_of_size(tmp_path / "huge.png", 30000, 30000)
    line = one_line_error(CliRunner().invoke(predict_main, [str(agent), str(tmp_path / "huge.png")]))
    assert str(tmp_path / "huge.png") in line and "decompression bomb" in line


def test_predict_refuses_an_image_past_the_bomb_warning_in_one_line(agent, tmp_path):
    _png_of_size(tmp_path / "wide.png", 60000, 2900)  # over PIL's warning, under its error: still refused
    line = one_line_error(CliRunner().invoke(predict_main, [str(agent), str(tmp_path / "wide.png")]))
    assert "wide.png" in line and "decompression bomb" in line


def test_a_long_thin_image_is_shrunk_before_it_is_padded_square(agent, tmp_path):
    from PIL import Image

    from mnist_core.predict import MAX_SIDE, image_to_tensor

    long = Image.new("L", (MAX_SIDE * 20, 40), 0)  # padded square first, it would be 1.3 GB
    long.paste(255, (MAX_SIDE * 9, 0, MAX_SIDE * 11, 40))
    long.save(tmp_path / "long.png")
    long.reduce(20).save(tmp_path / "shrunk.png")
    assert torch.equal(image_to_tensor(str(tmp_path / "long.png")), image_to_tensor(str(tmp_path / "shrunk.png")))
    result = CliRunner().invoke(predict_main, [str(agent), str(tmp_path / "long.png")])
    assert result.exit_code == 0 and "long.png: " in result.output


@pytest.mark.parametrize("content,reason", [(b"", "the file is empty"), (b"not an agent\n", "not a PyTorch zip archive")])
def test_predict_with_a_bad_agent_exits_2_with_one_line(tmp_path, content, reason):
    _write_digit(tmp_path / "three.png", 3)
    (tmp_path / "bad.pt").write_bytes(content)
    line = one_line_error(CliRunner().invoke(predict_main, [str(tmp_path / "bad.pt"), str(tmp_path / "three.png")]))
    assert str(tmp_path / "bad.pt") in line and reason in line
