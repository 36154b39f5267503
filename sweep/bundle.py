"""A student's hand-in: one zip with the standalone mnist.py, the report as a PDF and the trained agent.

    CSE4152_<id>_hw5.zip
        mnist.py                 the training script (torch and torchvision only), from sweep/handin
        CSE4152_<id>_HW05.pdf    the report
        mnist_agent.pt           the trained agent
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import zipfile
from importlib.resources import files
from pathlib import Path

from mnist_core import AGENT_FILENAME, load_agent

SCRIPT_NAME = "mnist.py"
NAME_PART = re.compile(r"[A-Za-z0-9_-]+")  # what may go into the file names


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
