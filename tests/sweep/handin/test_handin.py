"""The hand-in's standalone mnist.py: runs alone, trains exactly as mnist_core does, shares the agent file."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_core import MnistTensors, RunConfig, save_agent, train
from mnist_core.config import MEASURED_ONLY
from mnist_core.trainer import evaluate
from sweep.handin import mnist as handin

SCRIPT = handin.__file__
# Runs a script as `python SCRIPT ARGS` would and writes the modules loaded by its end to argv[1].
RECORD_MODULES = """
import atexit, json, runpy, sys
startup = set(sys.modules)
out, script = sys.argv[1], sys.argv[2]
atexit.register(lambda: json.dump({"startup": sorted(startup), "loaded": sorted(sys.modules)}, open(out, "w")))
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""
# What torch and torchvision load by themselves (optional imports included) to do what mnist.py does.
TORCH_ALONE = """
import io, torch, torchvision, torch.nn.functional as F
from torchvision.datasets import MNIST
model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
F.nll_loss(F.log_softmax(model(torch.randn(3, 4)), 1), torch.tensor([0, 1, 0])).backward()
optimizer.step()
buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
"""


def run_script(cwd, *args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)


def modules_loaded(cwd, script, *args):
    """The script's run, and the top-level names of the modules loaded by its end and at start-up."""
    record = cwd / f"{os.path.basename(script)}.modules.json"
    done = subprocess.run([sys.executable, "-c", RECORD_MODULES, str(record), str(script), *map(str, args)], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    modules = json.loads(record.read_text())
    return done, {m.split(".")[0] for m in modules["loaded"]}, {m.split(".")[0] for m in modules["startup"]}


class HomeworkNet(nn.Module):
    """The homework's network as a grader writes it: 784-50-50-10, ReLU, nothing of mnist.py's."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10))

    def forward(self, x):
        return F.log_softmax(self.layers(x.flatten(1)), dim=1)


@pytest.mark.system
def test_trains_alone_writes_an_agent_a_plain_net_loads_and_imports_only_torch(tiny_dir, tmp_path):
    done, loaded, startup = modules_loaded(tmp_path, SCRIPT, "--epochs", 3, "--lr", 0.1, "--data-dir", tiny_dir,
                                           "--no-download")
    assert len(re.findall(r"^epoch +\d+  lr ", done.stdout, re.M)) == 3
    assert "agent saved to mnist_agent.pt" in done.stdout

    weights = torch.load(tmp_path / "mnist_agent.pt", weights_only=True)
    assert HomeworkNet().load_state_dict(weights)  # a plain state_dict, with the homework's layer names
    saved = json.loads((tmp_path / "mnist_agent.json").read_text())
    assert saved["network"] == "784-50-50-10, relu"
    assert RunConfig(**saved["config"]) == RunConfig(epochs=3, lr=0.1)
    assert set(saved["metrics"]) == {"training_seconds", "epochs_completed", "final_train_loss", "final_train_error",
                                     "final_test_loss", "final_test_error", "best_test_error"}
    assert saved["metrics"]["epochs_completed"] == 3 and saved["metrics"]["final_test_error"] < 0.2

    assert {"torch", "torchvision"} <= loaded
    assert not loaded & {"mnist_core", "sweep", "mlflow", "click", "pandas", "yaml", "matplotlib", "scipy"}
    (tmp_path / "torch_alone.py").write_text(TORCH_ALONE)
    _, by_torch, _ = modules_loaded(tmp_path, tmp_path / "torch_alone.py")
    allowed = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | startup | by_torch
    assert loaded - allowed == set()


def test_its_agent_loads_into_a_plain_net_with_the_error_it_reported(tiny_dir, tmp_path, monkeypatch, capsys,
                                                                    pinned_threads):
    """What a grader does with the agent: load it into their own Net and test it; the error is the one
    mnist.py printed and saved, and `--load` prints it again."""
    monkeypatch.chdir(tmp_path)
    handin.main(["--epochs", "1", "--lr", "0.1", "--data-dir", str(tiny_dir), "--no-download", "--device", "cpu"])
    trained = capsys.readouterr().out
    model = HomeworkNet()
    model.load_state_dict(torch.load("mnist_agent.pt", weights_only=True))
    data = handin.load_mnist(tiny_dir, download=False)
    loss, error = handin.test(model.eval(), data.test_x, data.test_y, 1000)

    printed = re.search(r"^epoch +1 .* test loss ([\d.]+) err +([\d.]+)%", trained, re.M)
    assert printed, trained
    assert (float(printed[1]), float(printed[2])) == (round(loss, 4), round(100 * error, 2))
    assert json.loads(open("mnist_agent.json").read())["metrics"]["final_test_error"] == error
    handin.main(["--load", "mnist_agent.pt", "--data-dir", str(tiny_dir), "--no-download", "--device", "cpu"])
    assert f"test loss {loss:.4f} err {100 * error:6.2f}% on 160 images" in capsys.readouterr().out


def test_holding_out_every_training_image_is_one_message_and_exit_2(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        handin.main(["--validation", "320", "--data-dir", str(tiny_dir), "--no-download", "--device", "cpu"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: --validation 320 must be less than the 320 training images\n"
    assert os.listdir(tmp_path) == []


def test_load_agent_reads_the_settings_file_else_the_shapes(tiny_data, tmp_path):
    torch.manual_seed(0)
    sigmoid = handin.Net(3, 17, "sigmoid").eval()
    args = handin.build_parser().parse_args(["--depth", "3", "--width", "17", "--activation", "sigmoid"])
    handin.save_agent(tmp_path / "mnist_agent.pt", sigmoid, args, {"final_test_error": 0.5})
    assert json.loads((tmp_path / "mnist_agent.json").read_text())["network"] == "784-17-17-17-10, sigmoid"
    with torch.no_grad():
        assert torch.equal(handin.load_agent(tmp_path / "mnist_agent.pt")(tiny_data.test_x), sigmoid(tiny_data.test_x))

    (tmp_path / "mnist_agent.json").unlink()  # a grader kept the weights only: their shapes say depth and width
    relu = handin.load_agent(tmp_path / "mnist_agent.pt")
    shapes = [tuple(w.shape) for w in relu.state_dict().values()]
    assert shapes == [tuple(w.shape) for w in sigmoid.state_dict().values()]
    assert isinstance(relu.layers[1], nn.ReLU)
    with pytest.raises(ValueError, match="neither a state_dict nor a sweep's agent file"):
        torch.save({"format": "something else"}, tmp_path / "other.pt")
        handin.load_agent(tmp_path / "other.pt")


@pytest.mark.system
def test_help_states_every_default():
    text = handin.build_parser().format_help()
    text = text[text.index("\n  -h, --help"):]  # the options, past the usage line
    for option, default in (("--activation", "relu"), ("--depth", "2"), ("--width", "50"), ("--lr", "0.03"),
                            ("--momentum", "0.0"), ("--schedule", "fixed"), ("--gamma", "0.7"),
                            ("--restart-period", "2"), ("--epochs", "10"), ("--batch-size", "64"),
                            ("--test-batch-size", "1000"), ("--seed", "1"), ("--validation", "0"),
                            ("--data-dir", "./data")):
        help_of_option = text.split(f"\n  {option}", 1)[1].split("\n  --", 1)[0]
        assert f"(default: {default})" in " ".join(help_of_option.split()), option
    args = handin.build_parser().parse_args([])
    assert RunConfig(**{name: getattr(args, name) for name in handin.SETTINGS}) == RunConfig()
    # every setting of a sweep's run but what only changes what is measured (it measures every image)
    assert set(RunConfig().as_params()) - set(MEASURED_ONLY) == set(handin.SETTINGS)
    assert 'model.load_state_dict(torch.load("mnist_agent.pt", weights_only=True))' in text


@pytest.mark.system
def test_bad_input_is_one_message_and_exit_2(tmp_path):
    missing = run_script(tmp_path, "--data-dir", tmp_path / "nowhere", "--no-download")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "train-images-idx3-ubyte" in missing.stderr
    assert str(tmp_path / "nowhere") in missing.stderr and "Traceback" not in missing.stderr
    bad_lr = run_script(tmp_path, "--lr", "-1")
    assert bad_lr.returncode == 2 and "--lr must be > 0, got -1.0" in bad_lr.stderr
    (tmp_path / "junk.pt").write_bytes(b"not an agent")
    junk = run_script(tmp_path, "--load", "junk.pt")
    assert junk.returncode == 2 and "cannot load agent junk.pt" in junk.stderr and "Traceback" not in junk.stderr
    assert not (tmp_path / "mnist_agent.pt").exists()

    (tmp_path / "mnist_agent.pt").write_bytes(b"the agent handed in")
    kept = run_script(tmp_path, "--epochs", "1")  # would overwrite it: refused before anything is read
    assert kept.returncode == 2 and kept.stderr.count("\n") == 1 and "pass --force to replace it" in kept.stderr
    assert (tmp_path / "mnist_agent.pt").read_bytes() == b"the agent handed in"
    forced = run_script(tmp_path, "--epochs", "1", "--force", "--data-dir", tmp_path / "nowhere", "--no-download")
    assert forced.returncode == 2 and "train-images-idx3-ubyte" in forced.stderr  # past the check, to the data


@pytest.mark.system
def test_loads_a_sweep_agent_with_the_same_predictions(tiny_dir, tiny_data, tmp_path):
    config = RunConfig(epochs=1, depth=3, width=17, activation="sigmoid", lr=0.1)
    result = train(config, tiny_data)
    path = save_agent(tmp_path, result.model, config, result.summary())
    model = handin.load_agent(path)
    assert list(model.state_dict()) == list(result.model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(tiny_data.test_x), result.model(tiny_data.test_x))

    done = run_script(tmp_path, "--load", path, "--data-dir", tiny_dir, "--no-download")
    assert done.returncode == 0, done.stderr
    loss, error = evaluate(result.model, tiny_data.test_x, tiny_data.test_y, 1000)
    printed = re.search(r"test loss ([\d.]+) err +([\d.]+)% on 160 images", done.stdout)
    assert printed, done.stdout
    # the same weights on the same images; another process may sum in another order (float32, threads)
    assert float(printed[1]) == pytest.approx(loss, abs=1e-4) and float(printed[2]) == pytest.approx(100 * error, abs=100 / 160)


def test_reads_the_data_as_mnist_core_does(tiny_dir, tiny_data):
    data = handin.load_mnist(tiny_dir, download=False)
    for mine, core in zip(data, (tiny_data.train_x, tiny_data.train_y, tiny_data.test_x, tiny_data.test_y)):
        assert mine.dtype == core.dtype
        torch.testing.assert_close(mine, core)


@pytest.fixture
def float64():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("settings", [
    dict(activation="relu", lr=0.1),
    dict(activation="tanh", lr=0.05, momentum=0.9, schedule="cosine"),
    dict(activation="leaky_relu", lr=0.2, momentum=0.5, schedule="exponential", gamma=0.5, depth=1, width=30),
    dict(activation="sigmoid", lr=0.5, schedule="cosine_restarts", restart_period=2, depth=3, width=17,
         batch_size=32, test_batch_size=70, seed=7, validation=100),
], ids=["relu-fixed", "tanh-cosine-momentum", "leaky-exponential", "sigmoid-restarts-validation"])
def test_same_mathematics_as_mnist_core(settings, tiny_data, float64, capsys):
    config = RunConfig(epochs=3, **settings)
    tensors = [t.double() if t.is_floating_point() else t
               for t in (tiny_data.train_x, tiny_data.train_y, tiny_data.test_x, tiny_data.test_y)]
    core = train(config, MnistTensors(*tensors))

    argv = [f"--{name.replace('_', '-')}={value}" for name, value in config.as_params().items() if name in handin.SETTINGS]
    data = handin.hold_out(handin.Mnist(*tensors), config.validation)  # the images the sweep holds out
    model, history, _ = handin.fit(handin.build_parser().parse_args(argv), data)

    assert all(p.dtype == torch.float64 for p in [*model.parameters(), *core.model.parameters()])
    assert not core.diverged and len(history) == len(core.history) == 3
    for mine, theirs in zip(history, core.history):
        assert mine["lr"] == theirs.lr
        assert ("val_error" in mine) == (theirs.val_error is not None) == bool(config.validation)
        for metric in ("train_loss", "train_error", "test_loss", "test_error", "val_loss", "val_error"):
            if metric in mine:
                assert mine[metric] == pytest.approx(getattr(theirs, metric), rel=1e-12, abs=1e-12), metric
    core_weights = core.model.state_dict()
    assert list(model.state_dict()) == list(core_weights)
    for name, weight in model.state_dict().items():
        assert torch.allclose(weight, core_weights[name], rtol=1e-12, atol=1e-12), name
    assert len(re.findall(r"^epoch ", capsys.readouterr().out, re.M)) == 3
