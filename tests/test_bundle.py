"""The hand-in zip: its names and comment, its checks, and a grader's run of what it holds."""
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from mnist_core import RunConfig, load_agent, save_agent, train
from sweep import bundle
from sweep.bundle import write_bundle
from sweep.handin import mnist as handin

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

    trained = subprocess.run([sys.executable, "mnist.py", "--epochs", "1", "--data-dir", tiny_dir],
                             cwd=grader, env=env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    model = load_agent(grader / "mnist_agent.pt")
    assert model.config == RunConfig(epochs=1)
    with torch.no_grad():
        assert model(torch.zeros(2, 784)).shape == (2, 10)
    assert sorted(os.listdir(grader)) == ["CSE4152_42_HW05.pdf", "mnist.py", "mnist_agent.pt"]


def test_the_script_is_found_as_a_package_resource():
    assert bundle.files("sweep.handin").joinpath("mnist.py").read_text().startswith('"""MNIST with a multi-layer')
