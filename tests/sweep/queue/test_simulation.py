"""The queue's protocol proved by exploring interleavings (simulation.py): thousands of seeded
schedules of sweeps, `sweep status` readers and faults over the in-memory store, every invariant
checked at every step; and mutations that bring back a broken protocol fail it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

HERE = Path(__file__).parent
SWEEP = ROOT / "sweep"
SCHEDULES = int(os.environ.get("SIM_SCHEDULES", 1000))  # what CI explores; README says so


def simulate(schedules: int, first_seed: int = 0, pythonpath: str = "", parts: int = 2,
             store: str = "memory") -> tuple[int, str]:
    """Run the simulation over `schedules` seeds from `first_seed`, split over `parts` processes; the
    exit status of the first part that failed (else 0) and every part's output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))}
    share = -(-schedules // parts)
    procs = [subprocess.Popen([sys.executable, str(HERE / "simulation.py"), "--schedules", str(share),
                               "--first-seed", str(first_seed + i * share), "--store", store],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(parts)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c), 0), "\n".join(outputs)


def test_every_schedule_keeps_every_invariant():
    code, output = simulate(SCHEDULES)
    assert code == 0, output
    assert output.count("every invariant held") == 2, output


@pytest.mark.system
def test_sampled_schedules_keep_every_invariant_on_mlflows_own_store():
    """The in-memory store is MLflow's semantics as the queue relies on them; the same schedules on
    MLflow's SQLite store check that reliance (a sample: each costs about a second)."""
    code, output = simulate(12, first_seed=SCHEDULES, parts=1, store="mlflow")
    assert code == 0, output
    assert "12 schedules, every invariant held" in output, output


# Mutations of the production code, each bringing back a broken protocol: the simulation must find it.
MUTATIONS = {
    # One cursor for every reader (as before, one per index file): a `sweep status` that syncs hides
    # the runs that ended from the sweep, which dispatches them again and again and never ends (or,
    # with the runner's bound on refused rounds, gives up: either is a failure of the simulation).
    "shared cursor": ("queue/view.py", [
        ("class QueueView:\n", "class QueueView:\n    cursor = None\n"),
        ("        self.cursor: Optional[Cursor] = None\n", ""),
        ("        self.cursor = changes.cursor\n", "        QueueView.cursor = changes.cursor\n")],
        "never ends"),
    # A holder suspended past its lease goes on as if it still held the run, and finishes it even
    # though another process ended it (its clock ignored, and the ending it lost too).
    "lost holder finishes": ("queue/lease.py", [
        ("        return self.store.host.now() - self.confirmed < self.seconds - self.beat_every\n",
         "        return True\n"),
        ("            return standing == status\n", "            return True\n")],
        "but its ending was committed as"),
    # The ending not fenced: a holder that looked at its clock in time, then was suspended before
    # finishing, finishes the run that another process ended meanwhile.
    "unfenced finish": ("queue/lease.py", [
        ("            return standing == status\n", "            return True\n")],
        "but its ending was committed as"),
    # The ending committed in one request with the final numbers: MLflow writes the params first, so
    # a holder stopped between them leaves a run that is FINISHED (set so by the next claimant) without them.
    "ending before the numbers": ("queue/lease.py", [
        ("            if not self.beat(params=False):\n                return False\n", ""),
        ('            if not self._commit("FINISHED", {}):\n',
         '            if not self._commit("FINISHED", schema.heartbeat(self.store.host.now())):\n')],
        "without its final metrics"),
    # Two sweeps started at once each keep the parent run they created.
    "two parents": ("queue/claims.py", [
        ("            alone = [p.run_id for p in _present(store, experiment_id, sweep_name, checking=run_id)] "
         "== [run_id]\n",
         "            alone = True\n")],
        "parent run is"),
}


@pytest.mark.system
@pytest.mark.parametrize("name", MUTATIONS)
def test_a_mutation_that_breaks_the_protocol_fails_the_simulation(tmp_path, name):
    module, edits, symptom = MUTATIONS[name]
    mutated = tmp_path / "sweep"
    shutil.copytree(SWEEP, mutated, ignore=shutil.ignore_patterns("__pycache__"))
    path = mutated / module
    text = path.read_text()
    for old, new in edits:
        assert old in text, f"the mutation no longer applies to {module}: {old!r}"
        text = text.replace(old, new)
    path.write_text(text)
    code, output = simulate(SCHEDULES, pythonpath=str(tmp_path))
    assert code == 1, f"the simulation did not find the mutation '{name}':\n{output}"
    assert (symptom in output or symptom == "never ends" and ("no end after" in output or "stalled" in output)) \
        and "replay: python tests/sweep/queue/simulation.py --seed" in output, output
