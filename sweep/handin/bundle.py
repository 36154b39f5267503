"""A student's hand-in: one zip with the standalone mnist.py, the report as a PDF and the trained agent.

    CSE4152_<id>_hw5.zip
        mnist.py                 the training script (torch and torchvision only), from sweep/handin
        CSE4152_<id>_HW05.pdf    the report
        mnist_agent.pt           the trained agent

`write_bundle` packs given files; `bundle_sweep` makes them from a sweep in the store (the report,
and the agent of the sweep's best run) and packs them.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Optional

from mnist_core import AGENT_FILENAME, AgentFileError, load_agent

from .. import tracking
from ..errors import SweepError
from ..results import fetch_results
from ..results.analysis import analyse, drawn_runs
from ..results.best import best_by, overall_winner
from ..results.report import write_report
from ..spec import SweepSpec
from ..tracking import location as store

SCRIPT_NAME = "mnist.py"
NAME_PART = re.compile(r"[A-Za-z0-9_-]+")  # what may go into the file names
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def bundle_names(student_id: str, course: str = "CSE4152", homework: int = 5) -> tuple[str, str]:
    """(the zip's name, the report's name inside it), e.g. CSE4152_42_hw5.zip and CSE4152_42_HW05.pdf."""
    for label, value in (("student id", student_id), ("course", course)):
        if not isinstance(value, str) or not NAME_PART.fullmatch(value):
            raise ValueError(f"{label} {value!r} must be letters, digits, '-' and '_' only")
    if isinstance(homework, bool) or not isinstance(homework, int) or homework < 0:
        raise ValueError(f"homework {homework!r} must be a whole number >= 0")
    return f"{course}_{student_id}_hw{homework}.zip", f"{course}_{student_id}_HW{homework:02d}.pdf"


def write_bundle(out_dir: str | os.PathLike, student_id: str, *, report_pdf: str | os.PathLike,
                 agent: str | os.PathLike, course: str = "CSE4152", homework: int = 5, comment: str = "") -> Path:
    """Write the hand-in zip into `out_dir` (replacing one of the same name) and return its path.
    Raises ValueError, naming the culprit, for a bad id or a missing or wrong report or agent."""
    zip_name, report_name = bundle_names(student_id, course, homework)
    report_pdf, agent = Path(report_pdf), Path(agent)
    for label, path in (("report", report_pdf), ("agent", agent)):
        if not path.is_file():
            raise ValueError(f"{label} file {path} does not exist")
    with report_pdf.open("rb") as fh:
        if fh.read(5) != b"%PDF-":
            raise ValueError(f"report file {report_pdf} is not a PDF")
    try:
        load_agent(agent)
    except Exception as exc:  # a damaged or foreign file must not reach the grader
        raise ValueError(f"agent file {agent} cannot be loaded: {exc}") from None

    script = zipfile.ZipInfo(SCRIPT_NAME, date_time=time.localtime()[:6])
    script.external_attr = 0o644 << 16  # rw-r--r-- once unzipped
    script.compress_type = zipfile.ZIP_DEFLATED
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / zip_name
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{zip_name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr(script, files("sweep.handin").joinpath(SCRIPT_NAME).read_bytes())
            bundle.write(report_pdf, report_name)
            bundle.write(agent, AGENT_FILENAME)
            bundle.comment = comment.encode()
        os.chmod(tmp, 0o644)  # mkstemp made it private
        os.replace(tmp, target)  # all or nothing: a failure above leaves no partial zip
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


class BundleError(SweepError, ValueError):
    """A hand-in that cannot be made: a bad name, no finished run, no report, no agent."""


@dataclass(frozen=True)
class Winner:
    """The sweep's best run: the one whose agent goes into the hand-in."""
    run_id: str
    name: str
    test_error: float
    val_error: float = math.nan  # NaN when the run held no validation images
    agent_uri: str = ""

    def __str__(self) -> str:
        val = "" if math.isnan(self.val_error) else f", validation error {100 * self.val_error:.2f}%"
        return f"best run {self.run_id} ({self.name}): test error {100 * self.test_error:.2f}%{val}"


def best_run(results) -> Winner:
    """The best run overall, ranked as `sweep best` ranks (`best_by(runs, [])`): its best seed's run."""
    best = best_by(results.runs, [])
    if best.table.empty:
        raise BundleError(f"no finished, non-diverged run in experiment '{results.experiment}' yet: "
                          f"nothing to hand in")
    run_id = overall_winner(best)["run_id"]
    run = results.runs.loc[results.runs["run_id"] == run_id].iloc[0]
    return Winner(run_id, run["name"], float(run["test_error"]), float(run["val_error"]), run["agent_uri"])


def bundle_sweep(spec: SweepSpec, uri: Optional[str], student_id: str, *, course: str = "CSE4152",
                 homework: int = 5, out_dir: str | os.PathLike = ".") -> tuple[Path, Winner]:
    """Write the hand-in of `spec`'s sweep into `out_dir`: mnist.py, the sweep's report as a PDF and
    the agent of its best run; the zip's comment names that run. Returns the zip and the run.
    Raises a SweepError (BundleError, StoreError, TrackingError) naming the problem, with nothing
    written, for a bad name, a missing store or experiment, no finished run, or no report."""
    try:
        bundle_names(student_id, course, homework)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    uri = store.existing_store(uri, f"run `sweep run {spec.path}` first")
    results = fetch_results(spec, uri, histories=drawn_runs)
    winner = best_run(results)
    with tempfile.TemporaryDirectory(prefix="sweep-bundle-") as tmp:
        try:
            report_dir, _ = write_report(analyse(results), Path(tmp) / "report")
        except Exception as exc:  # the grader must never get a bundle without its report
            raise BundleError(f"no report could be built for {spec.path}: {type(exc).__name__}: "
                              f"{_first_line(str(exc))}") from exc
        agent = _fetch_agent(uri, winner, Path(tmp) / "agent")
        path = write_bundle(out_dir, student_id, report_pdf=report_dir / "report.pdf", agent=agent,
                            course=course, homework=homework, comment=str(winner))
    return path, winner


def _fetch_agent(uri: str, winner: Winner, folder: Path) -> Path:
    """The winner's agent, downloaded into `folder` and checked (a grader must get a loadable one)."""
    bar = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"  # MLflow draws a bar on stderr for every download, even of one file
    try:
        agent = Path(tracking.download_artifact(uri, winner.run_id, AGENT_FILENAME, folder))
    except tracking.TrackingError as exc:
        raise BundleError(f"cannot fetch the agent of run {winner.run_id} ({winner.name}): {exc}") from None
    finally:
        if bar is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = bar
    try:
        load_agent(agent)
    except AgentFileError as exc:
        raise BundleError(f"run {winner.run_id} ({winner.name}) has no usable agent: "
                          f"{str(exc).removeprefix(f'{agent}: ')} ({winner.agent_uri})") from None
    return agent


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
