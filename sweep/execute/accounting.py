"""What a `sweep run` did, and what it says at its end: each run's outcome, the runs not done and why,
the exit status, and the status of the sweep's parent run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .. import queue
from ..errors import SweepError
from ..interrupts import signum_of
from ..queue import schema
from .worker import Outcome

INCOMPLETE = 3  # exit status: runs are held by another process and this one did not wait for them
HELD = "held by another process"
LATER = "wanted or free only after this command looked (held runs ended): run the sweep again"
COUNTED = ("done", "diverged", "stopped", "duplicate", "failed", "skipped", "lost")  # what the parent run counts


class SweepInterrupted(Exception):
    """Ctrl-C, SIGTERM, SIGHUP or a closed stdout: dispatching stopped, the runs in flight were ended
    (or, when the store refused that, `unended` says why; their leases lapse instead)."""

    def __init__(self, reason: str, exit_code: int, unended: str = ""):
        super().__init__(reason)
        self.exit_code, self.unended = exit_code, unended


@dataclass
class SweepSummary:
    total: int = 0                  # runs in the (grid-filtered) sweep
    already_done: int = 0           # finished before this command started
    to_train: int = 0               # what this command set out to train
    held_elsewhere: int = 0         # running in another live process at the start
    outcomes: dict = field(default_factory=dict)   # key -> final Outcome of this command
    crashes: list = field(default_factory=list)    # what joblib said when a worker died
    not_done: list = field(default_factory=list)   # (name, why) of runs left unfinished at the end
    stalled: str = ""               # why dispatching gave up while runs were left
    adaptive: bool = False          # seeds given where a question is still open: `total` is an upper bound
    spared: int = 0                 # runs adaptive seeds did not need: their questions were settled
    jobs: int = 0
    threads: int = 0
    experiment_id: str = ""
    parent_run_id: str = ""

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        if self.failed or self.stalled or any(why not in (HELD, LATER) for _, why in self.not_done):
            return 1  # runs failed, or could not be trained at all (a worker pool that kept dying)
        return INCOMPLETE if self.not_done else 0

    def counts(self) -> dict:
        return {k: self.count(k) for k in COUNTED}


def exit_status(error: Optional[BaseException], summary: Optional[SweepSummary] = None) -> int:
    """The exit status of a `sweep run` that ended with `summary`, or with `error`."""
    if error is None:
        return summary.exit_code
    if isinstance(error, SweepInterrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + signum_of(error)
    if isinstance(error, SweepError):
        return error.exit_code
    raise error


def settle(summary: SweepSummary, view: queue.QueueView, names: dict, session: str, todo: set) -> None:
    """The runs of `names` (key -> name) as the view says they ended: failed for good, finished by
    this session's workers although their round gave up on them, or not done and why."""
    state = view.states(list(names))
    errors = queue.last_errors(view.attempts())
    for key, name in names.items():
        known = summary.outcomes.get(key)
        if state[key] == schema.DONE:
            if key in todo and (known is None or known.status == "lost"):
                mine = [a for a in view.attempts(key) if a.status == "FINISHED" and a.session == session]
                status = mine[0].outcome if mine else "skipped"  # a worker the round had given up on finished it
                summary.outcomes[key] = Outcome(key, name, status, mine[0].run_id if mine else "")
        elif state[key] == schema.FAILED and view.failures(key, session):
            error = (errors.get(key) or "failed").splitlines()[0]
            summary.outcomes[key] = Outcome(key, name, "failed", error=error)
        elif state[key] == schema.RUNNING:
            summary.not_done.append((name, HELD))
        elif summary.parent_run_id:
            summary.not_done.append((name, f"not trained: the worker pool failed ({summary.crashes[-1]})"
                                     if summary.crashes else "not trained"))
        else:  # it trained nothing, and since it looked a run held elsewhere failed or lapsed, or adaptive
            summary.not_done.append((name, LATER))  # seeds came to want one more


def parent_status(every: dict, failed: int) -> tuple[str, str]:
    """The parent run's status from the state of every key of the whole sweep (every grid run, every
    search's trials): FINISHED exactly when all are done; with a note why not otherwise."""
    missing = sum(v != schema.DONE for v in every.values())
    if not missing:
        return "FINISHED", ""
    if failed:
        return "FAILED", f"{failed} runs failed"
    if any(v == schema.RUNNING for v in every.values()):
        return "RUNNING", f"{missing} of {len(every)} runs not done; others are training them"
    return "KILLED", f"incomplete: {missing} of {len(every)} runs not done"
