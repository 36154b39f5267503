import json
import re
import subprocess
import sys

import numpy as np
from click.testing import CliRunner
from PIL import Image

from mnist_core.cli import main as train_main
from mnist_core.predict import main as predict_main

from conftest import tiny_digits


def test_help_lists_every_setting_with_default():
    result = CliRunner().invoke(train_main, ["--help"])
    assert result.exit_code == 0
    for option in ("--lr", "--epochs", "--activation", "--depth", "--width", "--momentum", "--schedule",
                   "--gamma", "--restart-period", "--seed", "--batch-size", "--device", "--data-dir"):
        assert option in result.output
    assert re.search(r"--lr FLOAT\s+Initial learning rate of SGD \(> 0\)\.\s+\[default:\s+0\.03\]", result.output)


def test_trains_prints_epochs_and_saves_agent(tiny_dir, tmp_path):
    result = CliRunner().invoke(train_main, ["--lr", "0.05", "--epochs", "2", "--data-dir", str(tiny_dir),
                                             "--out", str(tmp_path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "lr 0.05" in lines[0] and "test loss" in lines[0] and "err" in lines[0]
    assert (tmp_path / "mnist_agent.pt").exists()
    assert f"agent saved to {tmp_path / 'mnist_agent.pt'}" in result.output


def test_missing_data_exits_2_with_help(tmp_path):
    result = CliRunner().invoke(train_main, ["--data-dir", str(tmp_path / "nothing"), "--no-download"])
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte" in result.output and str(tmp_path / "nothing") in result.output


def test_bad_value_exits_2():
    result = CliRunner().invoke(train_main, ["--lr", "-1"])
    assert result.exit_code == 2 and "lr must be > 0" in result.output


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


def test_predict_prints_digit_and_probabilities(tiny_dir, tmp_path):
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
