"""How `sweep run` shows its progress: a bar with an ETA on a terminal; in a file or a pipe, plain
lines (one per finished run, a one-line progress summary now and then, the summary) and no carriage
returns."""
from __future__ import annotations

import sys
import time

import click

from ..execute import Progress

PLAIN_EVERY = 60.0  # seconds between progress lines when the output is not a terminal


def outcome_line(outcome) -> str:
    if outcome.status == "skipped":
        return f"  skip  {outcome.name}: finished or running elsewhere"
    if outcome.status == "lost":
        return f"  LOST  {outcome.name}: {outcome.error}"
    if outcome.status == "failed":
        return f"  FAIL  {outcome.name}: {outcome.error}"
    if outcome.status == "duplicate":
        return f"  dup   {outcome.name}: {outcome.error}"
    mark = {"done": "done", "diverged": "DIVG", "stopped": "STOP"}[outcome.status]
    group = f": 1/{outcome.together} of a fused group's time" if outcome.together > 1 else ""
    return f"  {mark}  {outcome.name}: test error {100 * outcome.test_error:.2f}% ({outcome.seconds:.1f}s{group})"


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


class Printer(Progress):
    """Prints a sweep's progress to stdout (results) and stderr (diagnostics and the bar)."""

    def __init__(self, uri: str, cluster=None):
        self.uri, self.cluster = uri, cluster
        self.bar = None
        self.done = 0
        self.total = 0
        self.started = self.last_line = time.time()
        self.tty = sys.stderr.isatty()

    def start(self, summary) -> None:
        self.total = summary.to_train
        held = summary.held_elsewhere
        if summary.to_train == 0:
            click.echo(f"nothing to train: {summary.already_done} of {summary.total} runs already done"
                       + (f", {held} held by another process" if held else "")
                       + (f", {summary.spared} spared by adaptive seeds" if summary.spared else ""))
            return
        of = f"up to {summary.total} runs (adaptive seeds: more follow where a question is open)" \
            if summary.adaptive else f"{summary.total} runs"
        click.echo(f"{summary.to_train} of {of} to train ({summary.already_done} already done"
                   + (f", {held} held by another process" if held else "")
                   + f") with {self.cluster or f'{summary.jobs} worker(s) x {summary.threads} thread(s)'}; "
                     f"tracking at {self.uri}")
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=summary.to_train, unit="run", dynamic_ncols=True, file=sys.stderr)

    def outcome(self, outcome) -> None:
        line = outcome_line(outcome)
        if outcome.status in ("done", "diverged", "stopped", "duplicate", "skipped"):
            self.done += 1
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr if outcome.status == "failed" else sys.stdout)
            self.bar.update(self.done - self.bar.n)
            return
        click.echo(line, err=outcome.status == "failed")
        if time.time() - self.last_line >= PLAIN_EVERY:
            self.last_line = time.time()
            elapsed = time.time() - self.started
            click.echo(f"progress: {self.done} of {self.total} runs, {elapsed / 60:.1f} min", err=True)

    def more(self, runs: int) -> None:
        self.total += runs
        if self.bar is not None:
            self.bar.total += runs
            self.bar.refresh()

    def waiting(self, runs: int, until: float, why: str) -> None:
        text = f"waiting for {runs} run(s) {why} (lease until {_clock(until)})"
        if self.bar is not None:
            self.bar.set_description_str(text[:60])
        elif time.time() - self.last_line >= PLAIN_EVERY / 6:
            self.last_line = time.time()
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, summary, spec: str, answer: str = "") -> None:
        """The sweep's summary; `answer` is the command that answers its first question."""
        self.close()
        if summary.to_train == 0 and not summary.not_done:
            return
        failed = summary.failed
        click.echo(f"\nsummary: {summary.count('done')} done, {summary.count('diverged')} diverged, "
                   + (f"{summary.count('stopped')} stopped early, " if summary.count("stopped") else "")
                   + (f"{summary.count('duplicate')} already trained (same settings), "
                      if summary.count("duplicate") else "")
                   + f"{len(failed)} failed, {summary.count('skipped')} skipped (finished or running elsewhere)"
                   + (f", {summary.count('lost')} taken over by another process" if summary.count("lost") else "")
                   + (f"; {len(summary.crashes)} worker crash(es)" if summary.crashes else "")
                   + (f"; {summary.spared} spared: adaptive seeds had settled their questions"
                      if summary.spared else ""))
        for crash in summary.crashes:
            click.echo(f"  worker crash: {crash}", err=True)
        for outcome in failed:
            click.echo(f"  failed: {outcome.name}: {outcome.error}", err=True)
        if summary.stalled:
            click.echo(f"stopped: {summary.stalled}. `sweep run {spec}` again reads the store afresh.", err=True)
        if summary.not_done:
            click.echo(f"incomplete: {len(summary.not_done)} run(s) not done: "
                       + "; ".join(f"{name} ({why})" for name, why in summary.not_done[:5])
                       + (" ..." if len(summary.not_done) > 5 else "")
                       + f". `sweep run {spec}` again trains them once they are free.", err=True)
        click.echo(f"next: {answer or f'sweep best {spec}'}   |   sweep report {spec}   |   sweep ui")
