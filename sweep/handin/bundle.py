"""A student's hand-in: one zip with the standalone mnist.py, the report as a PDF and the agent that
mnist.py trained.

    CSE4152_<id>_hw5.zip
        mnist.py                 the training script (torch and torchvision only), from sweep/handin
        CSE4152_<id>_HW05.pdf    the sweep's report
        mnist_agent.pt           the network's plain state_dict: `Net().load_state_dict(torch.load(...))`
        mnist_agent.json         the settings it was trained with and its final errors

`write_bundle` packs given files. `bundle_sweep` chooses a setting's learning rate from the sweep in
the store (`choose`), trains that network on the full training set by running the very mnist.py
that goes into the zip (so code and agent agree by construction), and packs it with the report.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch

from mnist_core.config import SETTING_TYPES

from ..errors import SweepError
from ..results import fetch_results
from ..results.analysis import analyse, drawn_runs
from ..results.best import best_by, candidates, overall_winner
from ..results.best import label as setting_label
from ..results.report import write_report
from ..spec import SweepSpec
from ..tracking import location as store
from . import mnist as script

SCRIPT_NAME = "mnist.py"
AGENT_NAME = script.AGENT_FILE
SETTINGS_NAME = script.SETTINGS_FILE
NAME_PART = re.compile(r"[A-Za-z0-9_-]+")  # what may go into the file names
# The homework's network: 784-50-50-10, ReLU, at a fixed learning rate.
HOMEWORK = {"activation": "relu", "depth": 2, "width": 50, "schedule": "fixed"}
# The settings mnist.py takes from the sweep's run; the seed and the held-out images are the hand-in's own.
TRAINED_AS_SWEPT = [s for s in script.SETTINGS if s not in ("seed", "validation")]
SHOWN_RIVALS = 6  # learning rates named beside the one chosen


def bundle_names(student_id: str, course: str = "CSE4152", homework: int = 5) -> tuple[str, str]:
    """(the zip's name, the report's name inside it), e.g. CSE4152_42_hw5.zip and CSE4152_42_HW05.pdf."""
    for what, value in (("student id", student_id), ("course", course)):
        if not isinstance(value, str) or not NAME_PART.fullmatch(value):
            raise ValueError(f"{what} {value!r} must be letters, digits, '-' and '_' only")
    if isinstance(homework, bool) or not isinstance(homework, int) or homework < 0:
        raise ValueError(f"homework {homework!r} must be a whole number >= 0")
    return f"{course}_{student_id}_hw{homework}.zip", f"{course}_{student_id}_HW{homework:02d}.pdf"


def check_agent(agent: Path) -> None:
    """Raise ValueError unless `agent` is a plain state_dict that mnist.py's Net loads (with the
    settings file beside it, when there is one): what a grader's `load_state_dict` needs."""
    try:
        weights = torch.load(agent, map_location="cpu", weights_only=True)
        if not (isinstance(weights, dict) and weights and all(isinstance(t, torch.Tensor) for t in weights.values())):
            raise ValueError("not a plain state_dict, which a grader's Net().load_state_dict(torch.load(path)) "
                             "needs")
        script.load_agent(agent)
    except Exception as exc:  # a damaged or foreign file must not reach the grader
        raise ValueError(f"agent file {agent} cannot be loaded: {_first_line(str(exc)) or type(exc).__name__}") \
            from None


def write_bundle(out_dir: str | os.PathLike, student_id: str, *, report_pdf: str | os.PathLike,
                 agent: str | os.PathLike, course: str = "CSE4152", homework: int = 5, comment: str = "") -> Path:
    """Write the hand-in zip into `out_dir` (replacing one of the same name) and return its path. The
    agent's settings file (mnist_agent.json beside it), when there is one, goes in too.
    Raises ValueError, naming the culprit, for a bad id or a missing or wrong report or agent."""
    zip_name, report_name = bundle_names(student_id, course, homework)
    report_pdf, agent = Path(report_pdf), Path(agent)
    for what, path in (("report", report_pdf), ("agent", agent)):
        if not path.is_file():
            raise ValueError(f"{what} file {path} does not exist")
    with report_pdf.open("rb") as fh:
        if fh.read(5) != b"%PDF-":
            raise ValueError(f"report file {report_pdf} is not a PDF")
    check_agent(agent)
    settings = script.settings_path(agent)

    code = zipfile.ZipInfo(SCRIPT_NAME, date_time=time.localtime()[:6])
    code.external_attr = 0o644 << 16  # rw-r--r-- once unzipped
    code.compress_type = zipfile.ZIP_DEFLATED
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / zip_name
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{zip_name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr(code, files("sweep.handin").joinpath(SCRIPT_NAME).read_bytes())
            bundle.write(report_pdf, report_name)
            bundle.write(agent, AGENT_NAME)
            if settings.is_file():
                bundle.write(settings, SETTINGS_NAME)
            bundle.comment = comment.encode()
        os.chmod(tmp, 0o644)  # mkstemp made it private
        os.replace(tmp, target)  # all or nothing: a failure above leaves no partial zip
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


class BundleError(SweepError, ValueError):
    """A hand-in that cannot be made: a bad name, no run of the setting, no report, a failed training."""


@dataclass(frozen=True)
class Choice:
    """The network to hand in and how the sweep chose its learning rate."""
    setting: dict            # activation, depth, width, schedule
    settings: dict           # every option of mnist.py's training: the setting's run as swept, overrides applied
    metric: str = ""         # what ranked the learning rates (val_error, else test_error)
    mean: float = math.nan   # the chosen lr's mean `metric` over its seeds; NaN for an lr that was not swept
    n: int = 0               # its seeds
    swept: dict = field(default_factory=dict)  # every lr swept for the setting -> its mean `metric`
    lr_given: bool = False

    @property
    def name(self) -> str:
        return setting_label(self.setting, list(self.setting))

    def __str__(self) -> str:
        lr = f"{self.settings['lr']:g}"
        shown = sorted(sorted(self.swept.items(), key=lambda item: item[1])[:SHOWN_RIVALS])  # a search tries many
        rivals = ", ".join(f"{k:g}: {100 * v:.2f}%" for k, v in shown)
        if len(self.swept) > len(shown):
            rivals += f" and {len(self.swept) - len(shown)} worse"
        if not self.lr_given and len(self.swept) == 1:
            why = f"the only learning rate swept (mean {self.metric} {100 * self.mean:.2f}% over {self.n} seeds)"
        elif not self.lr_given:
            why = (f"the lowest mean {self.metric} of the {len(self.swept)} learning rates swept "
                   f"({100 * self.mean:.2f}% over {self.n} seeds; {rivals})")
        elif math.isnan(self.mean):
            why = f"as given; the sweep tried {rivals}"
        else:
            why = f"as given: mean {self.metric} {100 * self.mean:.2f}% over {self.n} seeds (of {rivals})"
        return f"{self.name} at lr {lr}: {why}"


def choose(results, setting: dict, lr: Optional[float] = None, **overrides) -> Choice:
    """The learning rate the sweep found best for `setting` (activation, depth, width, schedule),
    ranked as `sweep best` ranks (the lowest mean validation error over seeds, else test error), or
    `lr` when given; and everything else mnist.py needs as that setting's runs had it (epochs,
    batch size, momentum...), `overrides` (epochs, seed) applied. The seed is the lowest the sweep
    used. BundleError when the sweep has no finished run of `setting`."""
    runs = results.runs
    mine = runs[runs[list(setting)].eq(pd.Series(setting)).all(axis=1)]
    per_lr = best_by(mine, ["lr"])
    if per_lr.table.empty:
        raise BundleError(_no_runs(results, setting, mine))
    swept = dict(zip(per_lr.table["lr"].astype(float), per_lr.table[per_lr.metric].astype(float)))
    row = overall_winner(per_lr)
    at = per_lr.table[per_lr.table["lr"].sub(lr).abs() <= 1e-12 * lr] if lr is not None else per_lr.table[:0]
    if len(at):
        row = at.iloc[0]
    run = runs.loc[runs["run_id"] == row["run_id"]].iloc[0]
    settings = {s: _typed(s, run[s]) for s in TRAINED_AS_SWEPT}
    settings.update(seed=int(candidates(mine)["seed"].min()), validation=0)
    mean, n = (float(row[per_lr.metric]), int(row["n"])) if lr is None or len(at) else (math.nan, 0)
    if lr is not None:
        settings["lr"] = float(lr)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return Choice(dict(setting), settings, per_lr.metric, mean, n, swept, lr is not None)


def _typed(name: str, value):
    """A value of the runs frame (a numpy scalar) as the int, float or str mnist.py's option takes."""
    return {"int": int, "float": float}.get(SETTING_TYPES[name], str)(value)


def _no_runs(results, setting: dict, mine) -> str:
    """What to say when the sweep has no finished run of `setting`, and what to do."""
    name = setting_label(setting, list(setting))
    tried = f" ({', '.join(f'{k} {v}' for k, v in mine['outcome'].value_counts().items())})" if len(mine) else ""
    done = candidates(results.runs)
    present = done[list(setting)].drop_duplicates().sort_values(list(setting))
    found = [setting_label(row, list(setting)) for _, row in present.head(4).iterrows()]
    more = f" and {len(present) - 4} more" if len(present) > 4 else ""
    there = f"it has {'; '.join(found)}{more}" if found else "it has no finished run at all"
    spec = results.spec.path if results.spec is not None else "SPEC"
    return (f"no finished run of {name} in experiment '{results.experiment}'{tried}: {there}. Name one with "
            f"--activation, --depth, --width and --schedule, or add {name} to a grid of {spec} and run "
            f"`sweep run {spec}`")


def mnist_options(settings: dict) -> list[str]:
    """mnist.py's command-line options for `settings`."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]


def train_agent(folder: Path, settings: dict, data_dir: str | os.PathLike, device: str = "auto",
                on_line: Callable[[str], None] = lambda line: None) -> dict:
    """Run `folder`/mnist.py (the copy that goes into the zip) with `settings` in `folder`, passing
    each line it prints to `on_line`; return what it wrote into mnist_agent.json. BundleError, with
    mnist.py's own message, when it fails or the network diverges."""
    # -u: each epoch's line comes as the epoch ends, not all at the end from a full buffer
    command = [sys.executable, "-u", SCRIPT_NAME, *mnist_options(settings), "--data-dir", str(data_dir),
               "--no-download", "--device", device]
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: a full pipe would stall mnist.py
        with subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=errors, text=True) as process:
            for line in process.stdout:
                on_line(line.rstrip("\n"))
        errors.seek(0)
        said = [line for line in errors.read().splitlines() if line.strip()]
    if process.returncode != 0:
        message = said[-1].removeprefix("error: ") if said else f"exit status {process.returncode}"
        raise BundleError(f"mnist.py could not train the agent: {message}")
    trained = json.loads((folder / SETTINGS_NAME).read_text())
    metrics = trained["metrics"]
    if metrics.get("epochs_completed", 0) < settings["epochs"] or not math.isfinite(metrics["final_test_loss"]):
        raise BundleError(f"the network diverged at lr {settings['lr']:g} in epoch "
                          f"{int(metrics.get('epochs_completed', 0))}: hand in another --lr")
    return trained


def bundle_sweep(spec: SweepSpec, uri: Optional[str], student_id: str, *, setting: Optional[dict] = None,
                 lr: Optional[float] = None, epochs: Optional[int] = None, seed: Optional[int] = None,
                 data_dir: str | os.PathLike | None = None, device: str = "auto", course: str = "CSE4152",
                 homework: int = 5, out_dir: str | os.PathLike = ".",
                 on_choice: Callable[[Choice], None] = lambda choice: None,
                 on_line: Callable[[str], None] = lambda line: None) -> tuple[Path, Choice, dict]:
    """Write the hand-in of `spec`'s sweep into `out_dir`: mnist.py, the sweep's report as a PDF, and
    the agent of `setting` (the homework's network unless given) that mnist.py trains on the full
    training set at the learning rate `choose` finds (said to `on_choice` before the report is built;
    mnist.py's lines go to `on_line`). Returns the zip, the choice and mnist_agent.json's contents.
    Raises a SweepError (BundleError, StoreError, TrackingError) or MnistDataMissing naming the
    problem, with nothing written, for a bad name, a missing store, experiment, setting or data, no
    report, or a training that fails."""
    from mnist_core.files import check_mnist

    try:
        bundle_names(student_id, course, homework)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    uri = store.existing_store(uri, f"run `sweep run {spec.path}` first")
    results = fetch_results(spec, uri, histories=drawn_runs)
    choice = choose(results, {**HOMEWORK, **(setting or {})}, lr, epochs=epochs, seed=seed)
    data = check_mnist(data_dir, download=True)
    on_choice(choice)
    with tempfile.TemporaryDirectory(prefix="sweep-bundle-") as tmp:
        try:
            report_dir, _ = write_report(analyse(results), Path(tmp) / "report")
        except Exception as exc:  # the grader must never get a bundle without its report
            raise BundleError(f"no report could be built for {spec.path}: {type(exc).__name__}: "
                              f"{_first_line(str(exc))}") from exc
        folder = Path(tmp) / "handin"
        folder.mkdir()
        (folder / SCRIPT_NAME).write_bytes(files("sweep.handin").joinpath(SCRIPT_NAME).read_bytes())
        trained = train_agent(folder, choice.settings, data, device, on_line)
        path = write_bundle(out_dir, student_id, report_pdf=report_dir / "report.pdf", agent=folder / AGENT_NAME,
                            course=course, homework=homework, comment=describe(choice, trained))
    return path, choice, trained


def describe(choice: Choice, trained: dict) -> str:
    """One line on the agent handed in: what it is, why this lr, and its test error."""
    s = choice.settings
    return (f"{trained['network']} at lr {s['lr']:g}, {s['epochs']} epochs, batch {s['batch_size']}, seed "
            f"{s['seed']}, trained on all training images by mnist.py: test error "
            f"{100 * trained['metrics']['final_test_error']:.2f}%; {choice}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
