"""The hand-in zip: its names and comment, its checks, the learning rate `sweep bundle` chooses, and
a grader's run of what it holds."""
import json
import math
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_core import RunConfig, save_agent, train
from sweep.handin import bundle
from sweep.handin import mnist as handin
from sweep.handin.bundle import write_bundle

from conftest import log_run, new_store

COMMENT = "784-50-50-10, relu at lr 0.1, 10 epochs: test error 2.54%"


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_data):
    """A report and an agent as mnist.py writes them (the state_dict and its settings file beside it)."""
    folder = tmp_path_factory.mktemp("parts")
    report = folder / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n% a report\n%%EOF\n")
    config = RunConfig(epochs=1, lr=0.1, width=20)
    result = train(config, tiny_data)
    args = handin.build_parser().parse_args(["--epochs", "1", "--lr", "0.1", "--width", "20"])
    handin.save_agent(folder / "mnist_agent.pt", result.model, args, result.summary())
    return report, folder / "mnist_agent.pt"


def test_zip_names_contents_and_comment(parts, tmp_path):
    report, agent = parts
    path = write_bundle(tmp_path / "out", "s123-x_Y", report_pdf=report, agent=agent, comment=COMMENT)
    assert path == tmp_path / "out" / "CSE4152_s123-x_Y_hw5.zip"
    assert sorted(os.listdir(tmp_path / "out")) == [path.name]
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["CSE4152_s123-x_Y_HW05.pdf", "mnist.py", "mnist_agent.json", "mnist_agent.pt"]
        assert z.comment.decode() == COMMENT
        assert z.read("mnist.py") == open(handin.__file__, "rb").read()
        assert z.read("CSE4152_s123-x_Y_HW05.pdf") == report.read_bytes()
        assert z.read("mnist_agent.pt") == agent.read_bytes()
        assert z.read("mnist_agent.json") == agent.with_suffix(".json").read_bytes()
        assert z.testzip() is None

    other = write_bundle(tmp_path / "out", "77", report_pdf=report, agent=agent, course="CSE1000", homework=12)
    assert other.name == "CSE1000_77_hw12.zip"
    with zipfile.ZipFile(other) as z:
        assert "CSE1000_77_HW12.pdf" in z.namelist() and z.comment == b""


@pytest.mark.parametrize("student_id", ["a b", "../x", "", "id/1", "é1", "x.y"])
def test_bad_student_id_is_named(parts, tmp_path, student_id):
    report, agent = parts
    with pytest.raises(ValueError, match=f"student id {student_id!r}"):
        write_bundle(tmp_path, student_id, report_pdf=report, agent=agent)
    assert os.listdir(tmp_path) == []


def test_missing_or_wrong_files_are_named(parts, tmp_path, tiny_data):
    report, agent = parts
    config = RunConfig(epochs=1)
    sweeps = save_agent(tmp_path / "sweep_agent.pt", train(config, tiny_data).model, config, {})
    with pytest.raises(ValueError, match=f"report file {tmp_path / 'none.pdf'} does not exist"):
        write_bundle(tmp_path / "out", "1", report_pdf=tmp_path / "none.pdf", agent=agent)
    with pytest.raises(ValueError, match=f"agent file {tmp_path / 'none.pt'} does not exist"):
        write_bundle(tmp_path / "out", "1", report_pdf=report, agent=tmp_path / "none.pt")
    with pytest.raises(ValueError, match=f"report file {agent} is not a PDF"):
        write_bundle(tmp_path / "out", "1", report_pdf=agent, agent=agent)
    with pytest.raises(ValueError, match=f"agent file {report} cannot be loaded"):
        write_bundle(tmp_path / "out", "1", report_pdf=report, agent=report)
    with pytest.raises(ValueError, match=f"agent file {sweeps} cannot be loaded: not a plain state_dict"):
        write_bundle(tmp_path / "out", "1", report_pdf=report, agent=sweeps)  # a grader's load_state_dict fails
    assert not (tmp_path / "out").exists()


def test_a_failure_mid_write_leaves_the_old_zip_and_no_partial_file(parts, tmp_path, monkeypatch):
    report, agent = parts
    first = write_bundle(tmp_path, "1", report_pdf=report, agent=agent, comment="first")
    before = first.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(tmp_path, "1", report_pdf=report, agent=agent, comment="second")
    assert os.listdir(tmp_path) == [first.name] and first.read_bytes() == before


def test_the_script_is_found_as_a_package_resource():
    assert bundle.files("sweep.handin").joinpath("mnist.py").read_text().startswith('"""MNIST with a multi-layer')


# --- `sweep bundle`: the hand-in of a sweep in the store ------------------------------------------

SWEEP = """
experiment: handin
defaults: {epochs: 1, validation: 100}
seeds: [1, 2]
grids:
  lr_by_activation: {activation: [relu, tanh], lr: [0.01, 0.1]}
  depth: {depth: [1, 3]}
"""
# (activation, lr, depth) -> per seed: (validation error, test error), "diverged", "pruned" or "failed".
# For the homework's network (relu, depth 2) lr 0.01 has the lowest single run and the lowest mean test
# error, but lr 0.1 the lowest mean validation error: that is the one `sweep best` and the hand-in choose.
# tanh at lr 0.1 is the best setting of all, but not the homework's network.
OUTCOMES = {("relu", 0.01, 2): ((0.015, 0.060), (0.090, 0.062)), ("relu", 0.1, 2): ((0.030, 0.070), (0.034, 0.072)),
            ("tanh", 0.01, 2): ("diverged", (0.060, 0.060)), ("tanh", 0.1, 2): ((0.020, 0.020), (0.021, 0.021)),
            ("relu", 0.03, 1): ((0.030, 0.030), (0.031, 0.031)), ("relu", 0.03, 3): ("pruned", "failed")}


@pytest.fixture(scope="module")
def known_sweep(tmp_path_factory):
    from sweep.spec import expand

    folder = tmp_path_factory.mktemp("known_sweep")
    spec, uri, experiment_id, parent = new_store(folder, SWEEP, "handin.yaml")
    for run in expand(spec):
        c = run.config
        outcome = OUTCOMES[(c.activation, c.lr, c.depth)][c.seed - 1]
        val, test = outcome if isinstance(outcome, tuple) else (0.004, 0.004)
        log_run(uri, experiment_id, parent, run, spec.name, math.nan if outcome == "diverged" else test,
                val_error=math.nan if outcome == "diverged" else val, diverged=outcome == "diverged",
                pruned=outcome == "pruned", status="FAILED" if outcome == "failed" else "FINISHED")
    return spec.path, uri


@pytest.fixture(scope="module")
def known_results(known_sweep):
    from sweep.results import fetch_results
    from sweep.spec import load_spec

    spec_path, uri = known_sweep
    return fetch_results(load_spec(spec_path), uri)


@pytest.mark.parametrize("setting, lr, expected, said", [
    ({}, None, dict(lr=0.1, epochs=1), "relu, depth 2, width 50, fixed at lr 0.1: the lowest mean val_error of the 2 "
                                       "learning rates swept (3.20% over 2 seeds; 0.01: 5.25%, 0.1: 3.20%)"),
    ({"activation": "tanh"}, None, dict(activation="tanh", lr=0.1),  # lr 0.01's mean is of its one finished seed
     "tanh, depth 2, width 50, fixed at lr 0.1: the lowest mean val_error of the 2 learning rates swept (2.05% over "
     "2 seeds; 0.01: 6.00%, 0.1: 2.05%)"),
    ({"depth": 1}, None, dict(depth=1, lr=0.03),
     "relu, depth 1, width 50, fixed at lr 0.03: the only learning rate swept (mean val_error 3.05% over 2 seeds)"),
    ({}, 0.01, dict(lr=0.01),
     "relu, depth 2, width 50, fixed at lr 0.01: as given: mean val_error 5.25% over 2 seeds (of 0.01: 5.25%, "
     "0.1: 3.20%)"),
    ({}, 0.5, dict(lr=0.5),
     "relu, depth 2, width 50, fixed at lr 0.5: as given; the sweep tried 0.01: 5.25%, 0.1: 3.20%"),
], ids=["homework", "tanh", "depth-1", "lr-given", "lr-not-swept"])
def test_the_learning_rate_is_the_best_mean_validation_error_of_the_setting(known_results, setting, lr, expected,
                                                                           said):
    choice = bundle.choose(known_results, {**bundle.HOMEWORK, **setting}, lr)
    homework = dict(activation="relu", depth=2, width=50, schedule="fixed", momentum=0.0, gamma=0.7, restart_period=2,
                    epochs=1, batch_size=64, test_batch_size=1000, seed=1, validation=0)  # all training images
    assert choice.settings == {**homework, **expected}
    assert str(choice) == said
    assert bundle.choose(known_results, bundle.HOMEWORK, epochs=3, seed=7).settings == {**homework, "lr": 0.1,
                                                                                         "epochs": 3, "seed": 7}


def test_a_searchs_many_learning_rates_are_named_six_at_most():
    swept = {lr / 100: 0.03 + lr / 10_000 for lr in range(1, 10)}  # lr 0.01: 3.01%, ..., lr 0.09: 3.09%
    choice = bundle.Choice(dict(bundle.HOMEWORK), {"lr": 0.01}, "val_error", swept[0.01], 3, swept)
    assert str(choice).endswith("of the 9 learning rates swept (3.01% over 3 seeds; 0.01: 3.01%, 0.02: 3.02%, "
                                "0.03: 3.03%, 0.04: 3.04%, 0.05: 3.05%, 0.06: 3.06% and 3 worse)")


def invoke(*args):
    from click.testing import CliRunner

    from sweep.cli import main

    return CliRunner().invoke(main, ["bundle", *map(str, args)])


def test_help_names_every_setting_and_its_default():
    text = " ".join(invoke("--help").output.split())
    assert "784-50-50-10 with ReLU" in text
    text = text.split("Options:", 1)[1]
    for option, default in (("--activation", "default: relu"), ("--depth", "default: 2"), ("--width", "default: 50"),
                            ("--schedule", "default: fixed"), ("--lr LR", "default: the one the sweep found best"),
                            ("--epochs N", "default: the sweep's"), ("--seed N", "default: the lowest the sweep used"),
                            ("--data-dir", "default: $MNIST_DATA"), ("--device", "default: auto")):
        assert default in text.split(f" {option} ", 1)[1].split(" --", 1)[0], option


class HomeworkNet(nn.Module):
    """The homework's network as a grader writes it: 784-50-50-10, ReLU, nothing of mnist.py's."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10))

    def forward(self, x):
        return F.log_softmax(self.layers(x.flatten(1)), dim=1)


# Runs mnist.py where nothing but torch and torchvision (and what they use) can be imported.
ONLY_TORCH = """
import runpy, sys
for name in ("sweep", "mnist_core", "mlflow", "pandas", "click", "yaml", "matplotlib", "scipy", "reportlab",
             "joblib", "optuna", "sklearn"):
    sys.modules[name] = None  # `import name` now fails as if it were not installed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.system
def test_bundle_hands_in_the_homeworks_network_trained_by_its_own_mnist_py(known_sweep, tiny_dir, tiny_data,
                                                                          tmp_path, monkeypatch):
    """The issue's acceptance test: the zip holds the code, the report and the 784-50-50-10 ReLU agent
    that its mnist.py trained at the chosen lr on all training images; unzipped into an empty folder,
    the agent loads into a grader's plain Net, `mnist.py --load` reproduces its test error, and a
    second training refuses to overwrite it, with torch and torchvision only."""
    spec_path, uri = known_sweep
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    result = invoke(spec_path, "--student-id", "s42", "--course", "CSE1000", "--homework", 12, "--out", out,
                    "--data-dir", tiny_dir, "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    zip_path = out / "CSE1000_s42_hw12.zip"
    lines = result.stdout.splitlines()
    assert lines[0] == ("handing in relu, depth 2, width 50, fixed at lr 0.1: the lowest mean val_error of the 2 "
                        "learning rates swept (3.20% over 2 seeds; 0.01: 5.25%, 0.1: 3.20%)")
    assert lines[1] == "training it with mnist.py on all training images: 1 epoch, batch 64, seed 1"
    assert len([line for line in lines if line.startswith("  epoch   1  lr 0.1  ")]) == 1
    assert lines[-1] == (f"hand-in written to {zip_path}: mnist.py, CSE1000_s42_HW12.pdf, mnist_agent.pt, "
                         f"mnist_agent.json")
    assert os.listdir(out) == [zip_path.name]  # the report and the agent were made elsewhere and are gone

    grader = tmp_path / "grader"
    with zipfile.ZipFile(zip_path) as z:
        assert sorted(z.namelist()) == ["CSE1000_s42_HW12.pdf", "mnist.py", "mnist_agent.json", "mnist_agent.pt"]
        assert z.read("mnist.py") == open(handin.__file__, "rb").read()
        assert z.read("CSE1000_s42_HW12.pdf")[:5] == b"%PDF-"
        comment = z.comment.decode()
        z.extractall(grader)
    saved = json.loads((grader / "mnist_agent.json").read_text())
    assert saved["network"] == "784-50-50-10, relu"
    expected = {name: value for name, value in RunConfig(lr=0.1, epochs=1).as_params().items() if name != "train_eval"}
    assert saved["config"] == {**expected, "validation": 0}  # its train error: every image, as the script measures
    error = saved["metrics"]["final_test_error"]
    assert comment.startswith(f"784-50-50-10, relu at lr 0.1, 1 epochs, batch 64, seed 1, trained on all training "
                              f"images by mnist.py: test error {100 * error:.2f}%; relu, depth 2, width 50, fixed")
    assert lines[-2].startswith(f"agent: 784-50-50-10, relu, test error {100 * error:.2f}% after ")

    model = HomeworkNet()
    model.load_state_dict(torch.load(grader / "mnist_agent.pt", weights_only=True))  # as a grader loads it
    with torch.no_grad():
        wrong = (model(tiny_data.test_x).argmax(1) != tiny_data.test_y).sum().item()
    assert wrong / 160 == pytest.approx(error, abs=1 / 160)  # within one image: another process, its own sums
    args = handin.build_parser().parse_args(["--lr", "0.1", "--epochs", "1"])
    torch.manual_seed(0)
    again, _, _ = handin.fit(args, handin.load_mnist(tiny_dir, download=False))  # mnist.py's training, here
    for name, weight in again.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, rtol=1e-4, atol=1e-5)

    def grade(*args):
        return subprocess.run([sys.executable, "-I", "-c", ONLY_TORCH, "mnist.py", *map(str, args)], cwd=grader,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)

    tested = grade("--load", "mnist_agent.pt", "--data-dir", tiny_dir, "--no-download")
    assert tested.returncode == 0, tested.stderr
    assert f"err {100 * error:6.2f}% on 160 images" in tested.stdout
    handed_in = (grader / "mnist_agent.pt").read_bytes()
    refused = grade("--epochs", 1, "--data-dir", tiny_dir, "--no-download")  # would replace the agent handed in
    assert refused.returncode == 2 and "pass --force" in refused.stderr
    assert (grader / "mnist_agent.pt").read_bytes() == handed_in


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    """A store with a sweep that has no finished run, and a sweep file whose experiment is not in it."""
    from sweep.spec import expand

    folder = tmp_path_factory.mktemp("refusals")
    spec, uri, experiment_id, parent = new_store(folder, "experiment: unfinished\ngrids:\n  g: {lr: [0.1, 1.0]}\n",
                                                 "unfinished.yaml")
    first, second = expand(spec)
    log_run(uri, experiment_id, parent, first, spec.name, 0.03, status="FAILED")
    log_run(uri, experiment_id, parent, second, spec.name, float("nan"), diverged=True)
    (folder / "elsewhere.yaml").write_text("experiment: elsewhere\ngrids:\n  g: {lr: [0.1]}\n")
    return folder, uri


@pytest.mark.parametrize("case, message", [
    ("bad id", "student id 'a b' must be letters, digits, '-' and '_' only"),
    ("id with a path", "student id '../x' must be letters"),
    ("no store", "no tracking store at sqlite:///"),
    ("no experiment", "no experiment 'elsewhere' in tracking store"),
    ("no finished run", "no finished run of relu, depth 2, width 50, fixed in experiment 'unfinished' (failed 1, "
                        "diverged 1): it has no finished run at all. Name one with --activation, --depth, --width "
                        "and --schedule, or add relu, depth 2, width 50, fixed to a grid of"),
    ("setting not swept", "no finished run of relu, depth 4, width 50, fixed in experiment 'handin': it has relu, "
                          "depth 1, width 50, fixed; relu, depth 2, width 50, fixed; tanh, depth 2, width 50, fixed. "
                          "Name one with"),
    ("setting stopped", "no finished run of relu, depth 3, width 50, fixed in experiment 'handin' (stopped 1, "
                        "failed 1): it has relu, depth 1"),
    ("no data", "MNIST not found in"),
    ("no report", "no report could be built for"),
    pytest.param("diverged", "the network diverged at lr 1e+06 in epoch 1: hand in another --lr",
                 marks=pytest.mark.system),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(known_sweep, unfinished, tiny_dir, tmp_path, monkeypatch,
                                                         case, message):
    spec, uri = known_sweep
    folder, other_store = unfinished
    options = {"--student-id": "42", "--data-dir": tiny_dir}
    if case == "bad id":
        options["--student-id"] = "a b"
    elif case == "id with a path":
        options["--student-id"] = "../x"
    elif case == "no store":
        uri = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    elif case == "no experiment":
        spec, uri = folder / "elsewhere.yaml", other_store
    elif case == "no finished run":
        spec, uri = folder / "unfinished.yaml", other_store
    elif case == "setting not swept":
        options["--depth"] = 4
    elif case == "setting stopped":
        options["--depth"] = 3
    elif case == "no data":
        options["--data-dir"] = tmp_path / "nowhere"
    elif case == "no report":
        from sweep.results import report

        def broken(blocks, path):
            raise RuntimeError("the PDF renderer broke")

        monkeypatch.setattr(report, "render_pdf", broken)
    elif case == "diverged":
        options["--lr"] = 1e6
    out = tmp_path / "out"
    result = invoke(spec, *[str(part) for pair in options.items() for part in pair], "--out", out,
                    "--tracking-uri", uri)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.output
    said_before = "handing in " if case in ("no report", "diverged") else ""  # what it was about to hand in
    assert result.stdout.startswith(said_before) and "hand-in written" not in result.stdout
    assert os.listdir(tmp_path) == []  # no zip, no folder, no store


@pytest.mark.system
def test_registering_the_command_keeps_the_cli_light():
    """`sweep --help` and `sweep plan` answer at once: importing the CLI loads none of the heavy libraries."""
    heavy = ("torch", "mlflow", "pandas", "matplotlib", "reportlab", "scipy", "mnist_core.agent")
    done = subprocess.run([sys.executable, "-c", "import sys, sweep.cli; print(' '.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from sweep.cli import main

    assert "bundle" in main.commands
    assert not [m for m in done.stdout.split() if m.split(".")[0] in heavy or m in heavy]
