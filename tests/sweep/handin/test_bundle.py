"""The hand-in zip: its names and comment, its checks, and a grader's run of what it holds."""
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from mnist_core import RunConfig, load_agent, save_agent, train
from sweep.handin import bundle
from sweep.handin import mnist as handin
from sweep.handin.bundle import write_bundle

from conftest import log_run, new_store

COMMENT = "best run 0123abcd (relu-lr0.1-d2-w50), test error 2.54%"


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_data):
    folder = tmp_path_factory.mktemp("parts")
    report = folder / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n% a report\n%%EOF\n")
    config = RunConfig(epochs=1, lr=0.1, width=20)
    result = train(config, tiny_data)
    agent = save_agent(folder / "mnist_agent.pt", result.model, config, result.summary())
    return report, agent


def test_zip_names_contents_and_comment(parts, tmp_path):
    report, agent = parts
    path = write_bundle(tmp_path / "out", "s123-x_Y", report_pdf=report, agent=agent, comment=COMMENT)
    assert path == tmp_path / "out" / "CSE4152_s123-x_Y_hw5.zip"
    assert sorted(os.listdir(tmp_path / "out")) == [path.name]
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["CSE4152_s123-x_Y_HW05.pdf", "mnist.py", "mnist_agent.pt"]
        assert z.comment.decode() == COMMENT
        assert z.read("mnist.py") == open(handin.__file__, "rb").read()
        assert z.read("CSE4152_s123-x_Y_HW05.pdf") == report.read_bytes()
        assert z.read("mnist_agent.pt") == agent.read_bytes()
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


def test_missing_or_wrong_files_are_named(parts, tmp_path):
    report, agent = parts
    with pytest.raises(ValueError, match=f"report file {tmp_path / 'none.pdf'} does not exist"):
        write_bundle(tmp_path / "out", "1", report_pdf=tmp_path / "none.pdf", agent=agent)
    with pytest.raises(ValueError, match=f"agent file {tmp_path / 'none.pt'} does not exist"):
        write_bundle(tmp_path / "out", "1", report_pdf=report, agent=tmp_path / "none.pt")
    with pytest.raises(ValueError, match=f"report file {agent} is not a PDF"):
        write_bundle(tmp_path / "out", "1", report_pdf=agent, agent=agent)
    with pytest.raises(ValueError, match=f"agent file {report} cannot be loaded"):
        write_bundle(tmp_path / "out", "1", report_pdf=report, agent=report)
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


@pytest.mark.system
def test_unzipped_hand_in_trains_and_tests_alone(parts, tiny_dir, tmp_path):
    """The issue's acceptance test: a grader unzips into an empty folder and runs mnist.py."""
    report, agent = parts
    path = write_bundle(tmp_path / "out", "42", report_pdf=report, agent=agent, comment=COMMENT)
    grader = tmp_path / "grader"
    grader.mkdir()
    with zipfile.ZipFile(path) as z:
        z.extractall(grader)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    tested = subprocess.run([sys.executable, "mnist.py", "--load", "mnist_agent.pt", "--data-dir", tiny_dir],
                            cwd=grader, env=env, capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0, tested.stderr
    error = load_agent(agent).metrics["final_test_error"]
    printed = re.search(r"err +([\d.]+)% on 160 images", tested.stdout)
    assert printed and float(printed[1]) == pytest.approx(100 * error, abs=100 / 160), tested.stdout  # within one image

    trained = subprocess.run([sys.executable, "mnist.py", "--epochs", "1", "--data-dir", tiny_dir, "--force"],
                             cwd=grader, env=env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    model = load_agent(grader / "mnist_agent.pt")
    assert model.config == RunConfig(epochs=1)
    with torch.no_grad():
        assert model(torch.zeros(2, 784)).shape == (2, 10)
    assert sorted(os.listdir(grader)) == ["CSE4152_42_HW05.pdf", "mnist.py", "mnist_agent.pt"]


def test_the_script_is_found_as_a_package_resource():
    assert bundle.files("sweep.handin").joinpath("mnist.py").read_text().startswith('"""MNIST with a multi-layer')


# --- `sweep bundle`: the hand-in of a sweep in the store ------------------------------------------

SWEEP = """
experiment: handin
defaults: {epochs: 2, width: 16}
seeds: [1, 2]
grids:
  lr_by_activation: {activation: [relu, tanh], lr: [0.01, 0.1]}
  depth: {depth: [1, 3]}
"""
# (activation, lr, depth) -> per seed: a final test error, "diverged", "pruned" (stopped early) or "failed".
# relu at lr 0.1 has the lowest single run, but tanh at lr 0.1 the lowest mean over its seeds: `sweep best`
# ranks settings by their mean and hands in the best seed's run, so tanh lr 0.1 seed 2 is the winner.
OUTCOMES = {("relu", 0.01, 2): (0.050, 0.052), ("relu", 0.1, 2): (0.020, 0.044),
            ("tanh", 0.01, 2): ("diverged", 0.060), ("tanh", 0.1, 2): (0.026, 0.025),
            ("relu", 0.03, 1): (0.030, 0.031), ("relu", 0.03, 3): ("pruned", "failed")}
WINNER = (("tanh", 0.1, 2), 2)


def log_known(uri, experiment_id, parent, run, sweep_name, outcome, folder):
    """A run with its own agent (untrained weights of its shape, its settings, its error)."""
    from mnist_core.model import MLP

    torch.manual_seed(run.config.seed)
    error = {"pruned": 0.004, "diverged": float("nan"), "failed": 0.003}.get(outcome, outcome)
    agent = None
    if outcome != "failed":
        agent = save_agent(folder / run.key / "mnist_agent.pt", MLP.from_config(run.config), run.config,
                           {"final_test_error": error})
    return log_run(uri, experiment_id, parent, run, sweep_name, error, diverged=outcome == "diverged",
                   pruned=outcome == "pruned", status="FAILED" if outcome == "failed" else "FINISHED",
                   agent=agent), agent


@pytest.fixture(scope="module")
def known_sweep(tmp_path_factory):
    from sweep.spec import expand

    folder = tmp_path_factory.mktemp("known_sweep")
    spec, uri, experiment_id, parent = new_store(folder, SWEEP, "handin.yaml")
    runs = {}
    for run in expand(spec):
        c = run.config
        setting = (c.activation, c.lr, c.depth)
        run_id, agent = log_known(uri, experiment_id, parent, run, spec.name, OUTCOMES[setting][c.seed - 1], folder)
        runs[(setting, c.seed)] = (run_id, run, agent)
    return spec.path, uri, runs


def invoke(*args):
    from click.testing import CliRunner

    from sweep.cli import main

    return CliRunner().invoke(main, ["bundle", *map(str, args)])


def test_bundle_holds_the_script_the_report_and_the_best_runs_agent(known_sweep, tmp_path):
    spec_path, uri, runs = known_sweep
    run_id, planned, agent = runs[WINNER]
    out = tmp_path / "handin"
    result = invoke(spec_path, "--student-id", "s42", "--out", out, "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    said = f"best run {run_id} ({planned.name}): test error 2.50%"
    zip_path = out / "CSE4152_s42_hw5.zip"
    assert result.stdout.splitlines() == [said, f"hand-in written to {zip_path}: mnist.py, CSE4152_s42_HW05.pdf, "
                                                f"mnist_agent.pt"]
    assert os.listdir(out) == [zip_path.name]  # the report was built elsewhere and is gone
    with zipfile.ZipFile(zip_path) as z:
        assert sorted(z.namelist()) == ["CSE4152_s42_HW05.pdf", "mnist.py", "mnist_agent.pt"]
        assert z.comment.decode() == said
        assert z.read("mnist.py") == open(handin.__file__, "rb").read()
        assert z.read("CSE4152_s42_HW05.pdf")[:5] == b"%PDF-"
        assert z.read("mnist_agent.pt") == agent.read_bytes()
        z.extract("mnist_agent.pt", tmp_path)
    model = load_agent(tmp_path / "mnist_agent.pt")
    assert model.config == planned.config and model.metrics == {"final_test_error": pytest.approx(0.025)}


def test_bundle_names_the_course_and_homework(known_sweep, tmp_path):
    spec_path, uri, _ = known_sweep
    result = invoke(spec_path, "--student-id", "77", "--course", "CSE1000", "--homework", 12, "--out", tmp_path,
                    "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "CSE1000_77_hw12.zip") as z:
        assert "CSE1000_77_HW12.pdf" in z.namelist()


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
def test_the_commands_hand_in_trains_and_tests_alone(known_sweep, tiny_dir, tmp_path):
    """The issue's acceptance test on the command's zip: unzipped into an empty folder, mnist.py tests
    the agent handed in, refuses to train over it, and with --force trains one epoch and writes an
    agent, with torch and torchvision only."""
    spec_path, uri, runs = known_sweep
    result = invoke(spec_path, "--student-id", "42", "--out", tmp_path / "out", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    grader = tmp_path / "grader"
    grader.mkdir()
    with zipfile.ZipFile(tmp_path / "out" / "CSE4152_42_hw5.zip") as z:
        z.extractall(grader)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def grade(*args):
        return subprocess.run([sys.executable, "-I", "-c", ONLY_TORCH, "mnist.py", *map(str, args)], cwd=grader,
                              env=env, capture_output=True, text=True, timeout=300)

    tested = grade("--load", "mnist_agent.pt", "--data-dir", tiny_dir, "--no-download")
    assert tested.returncode == 0, tested.stderr
    assert re.search(r"err +[\d.]+% on 160 images", tested.stdout), tested.stdout
    handed_in = (grader / "mnist_agent.pt").read_bytes()
    refused = grade("--epochs", 1, "--data-dir", tiny_dir, "--no-download")  # would replace the agent handed in
    assert refused.returncode == 2 and "pass --force" in refused.stderr
    assert (grader / "mnist_agent.pt").read_bytes() == handed_in
    trained = grade("--epochs", 1, "--data-dir", tiny_dir, "--no-download", "--force")
    assert trained.returncode == 0, trained.stderr
    assert "agent saved to mnist_agent.pt" in trained.stdout
    assert load_agent(grader / "mnist_agent.pt").config == RunConfig(epochs=1)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """A store with a sweep that has no finished run, one whose best run's agent is not an agent,
    and a sweep file whose experiment is not in the store."""
    from sweep.spec import expand

    folder = tmp_path_factory.mktemp("refusals")
    spec, uri, experiment_id, parent = new_store(folder, "experiment: unfinished\ngrids:\n  g: {lr: [0.1, 1.0]}\n",
                                                 "unfinished.yaml")
    first, second = expand(spec)
    log_run(uri, experiment_id, parent, first, spec.name, 0.03, status="FAILED")
    log_run(uri, experiment_id, parent, second, spec.name, float("nan"), diverged=True)
    spec, _, experiment_id, parent = new_store(folder, "experiment: placeholder\ngrids:\n  g: {lr: [0.1]}\n",
                                               "placeholder.yaml")
    log_run(uri, experiment_id, parent, expand(spec)[0], spec.name, 0.03)  # its agent is a placeholder file
    (folder / "elsewhere.yaml").write_text("experiment: elsewhere\ngrids:\n  g: {lr: [0.1]}\n")
    return folder, uri


@pytest.mark.parametrize("case, message", [
    ("bad id", "student id 'a b' must be letters, digits, '-' and '_' only"),
    ("id with a path", "student id '../x' must be letters"),
    ("no store", "no tracking store at sqlite:///"),
    ("no experiment", "no experiment 'elsewhere' in tracking store"),
    ("no finished run", "no finished, non-diverged run in experiment 'unfinished' yet"),
    ("no report", "no report could be built for"),
    ("no agent", "has no usable agent: not an agent file (not a PyTorch zip archive) (file:///"),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(known_sweep, refusals, tmp_path, monkeypatch, case,
                                                         message):
    known_spec, _, _ = known_sweep
    folder, uri = refusals
    spec, student_id = known_spec, "42"
    if case == "bad id":
        student_id = "a b"
    elif case == "id with a path":
        student_id = "../x"
    elif case == "no store":
        uri = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    elif case == "no experiment":
        spec = folder / "elsewhere.yaml"
    elif case == "no finished run":
        spec = folder / "unfinished.yaml"
    elif case == "no report":
        from sweep.results import report

        def broken(blocks, path):
            raise RuntimeError("the PDF renderer broke")

        monkeypatch.setattr(report, "render_pdf", broken)
        uri = known_sweep[1]
    elif case == "no agent":
        spec = folder / "placeholder.yaml"
    if case in ("bad id", "id with a path"):
        uri = known_sweep[1]
    out = tmp_path / "out"
    result = invoke(spec, "--student-id", student_id, "--out", out, "--tracking-uri", uri)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []  # no zip, no folder, no store


def test_the_winner_says_its_validation_error_when_it_has_one():
    assert str(bundle.Winner("abc", "relu-lr0.1", 0.0254)) == "best run abc (relu-lr0.1): test error 2.54%"
    assert (str(bundle.Winner("abc", "relu-lr0.1", 0.0254, 0.0240))
            == "best run abc (relu-lr0.1): test error 2.54%, validation error 2.40%")


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
