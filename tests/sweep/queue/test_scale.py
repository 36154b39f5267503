"""A sweep with many runs in every state: plan, status, best and resume answer through the index
exactly as a read of the store itself does, and the index comes back whole when deleted, damaged or
out of date."""
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from sweep import queue, tracking
from sweep.cli import main
from sweep.queue import Host, Index, index_path, schema
from sweep.queue.index import BASE
from sweep.results.best import best_by
from sweep.results.fetch import PARAMS, STORE_METRICS, TAGS, fetch_results, join_outcomes, planned_frame, store_frame
from sweep.spec import expand
from sweep.tracking.mlflow_store import MlflowStore

from conftest import log_run, new_store

TRAINING = f"tags.`{schema.KIND}` = '{schema.TRAIN}'"

LRS = [round(0.01 * (i + 1), 2) for i in range(15)]
SPEC = f"""
experiment: scale
defaults: {{epochs: 1}}
seeds: [1, 2]
grids:
  many: {{activation: [relu, tanh, sigmoid, leaky_relu], lr: {LRS}}}
  finished: {{activation: [relu], width: [7], lr: [0.5, 0.6, 0.7]}}
  resume: {{activation: [tanh], width: [3], lr: [0.5, 0.6, 0.7, 0.8]}}
"""


class Gone(Host):
    """A process of this host that has exited: its claims lapse at once."""

    def me(self) -> str:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        return super().me().rsplit(":", 2)[0] + f":{proc.pid}:1.00"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """120 runs of grid `many` in every state a run can be in; `finished` all done; `resume` done but
    for one failed and one never tried."""
    folder = tmp_path_factory.mktemp("scale")
    spec, uri, experiment_id, parent = new_store(folder, SPEC)
    store = MlflowStore(uri)
    runs = {name: expand(spec, [name]) for name in spec.grids}

    def log(run, error=0.03, **kw):
        return log_run(uri, experiment_id, parent, run, spec.name, error, **kw)

    for i, run in enumerate(runs["many"]):
        if i < 84:
            log(run, 0.02 + 0.0003 * i, diverged=i % 17 == 5, pruned=i % 23 == 7,
                epochs_completed=0 if i % 29 == 3 else None)
        elif i < 90:
            log(run, status="FAILED")                                            # failed
        elif i < 94:
            log(run, status="FAILED")
            log(run, 0.025)                                                      # failed, then done
        elif i < 98:
            log(run, status="KILLED")                                            # pending again
        elif i < 100:                                                            # held by a live lease
            queue.claim(store, experiment_id, parent, run, spec.name, "live", lease_seconds=3600)
        elif i < 102:                                                            # its holder is gone: pending
            queue.claim(MlflowStore(uri, Gone()), experiment_id, parent, run, spec.name, "dead")
        elif i < 104:                                                            # a withdrawn claim
            lease = queue.claim(store, experiment_id, parent, run, spec.name, "lost")
            tracking.delete_run(uri, lease.run_id)
    for run in runs["finished"]:
        log(run, 0.04)
    resume = runs["resume"]
    for run in resume[:-2]:
        log(run, 0.05)
    log(resume[-2], status="FAILED")
    return folder, spec, uri, experiment_id, parent


def store_truth(spec, uri, experiment_id):
    """States and runs as a read of every training run in the store gives them (no index)."""
    rows = tracking.search(uri, experiment_id, TRAINING)
    planned = expand(spec)
    host = Host()
    states = queue.states([r.key for r in planned], [schema.decode(r) for r in rows], host.now(), host.alive)
    return rows, states


def as_table(rows) -> list:
    """The store's rows as Index.table gives them to the read side."""
    return [(*(getattr(r, c) for c in BASE), *(r.tags.get(n) for n in TAGS),
             *(r.params.get(n) for n in PARAMS), *(r.metrics.get(n) for n in STORE_METRICS)) for r in rows]


def mirrored(uri, experiment_id):
    index = Index(MlflowStore(uri), experiment_id)
    index.sync()
    return sorted(index.rows(), key=lambda r: r.run_id)


def sweep(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_status_and_plan_say_what_the_store_says(store):
    folder, spec, uri, experiment_id, parent = store
    index_path(uri).unlink(missing_ok=True)
    _, truth = store_truth(spec, uri, experiment_id)
    counts = queue.count(truth)
    assert counts["running"] == 2 and counts["failed"] == 7 and counts["done"] > 90 and counts["pending"] > 10
    keys = [r.key for r in expand(spec)]
    read = queue.read_states(MlflowStore(uri), spec.experiment, keys)
    assert read.states == truth
    assert queue.last_read_states(Index.last_read(index_path(uri), spec.experiment), keys).states == truth  # `plan`
    line = ", ".join(f"{n} {s}" for s, n in counts.items())
    status = sweep("status", folder / "s.yaml", "--tracking-uri", uri)
    assert status.exit_code == 0 and f"{len(truth)} runs: {line}" in status.output
    assert status.output.count("  failed: ") == 7
    plan = sweep("plan", folder / "s.yaml", "--tracking-uri", uri)
    assert plan.exit_code == 0 and f"{len(truth)} runs in experiment 'scale': {line}" in plan.output
    shown = dict(line.split()[:2] for line in plan.output.splitlines()[1:len(truth) + 1])
    assert shown == {r.name: truth[r.key] for r in expand(spec)}


def test_best_through_the_index_is_best_from_the_store(store):
    folder, spec, uri, experiment_id, parent = store
    rows, truth = store_truth(spec, uri, experiment_id)
    direct = join_outcomes(planned_frame(spec), store_frame(as_table(rows)), truth)
    results = fetch_results(spec, uri)
    pd.testing.assert_frame_equal(results.runs, direct, check_exact=True)
    for by in (["activation"], ["lr"], []):
        from_index, from_store = best_by(results.runs, by), best_by(direct, by)
        pd.testing.assert_frame_equal(from_index.table, from_store.table, check_exact=True)
        assert repr(from_index.within) == repr(from_store.within)  # repr: a NaN is not equal to itself
        assert from_index.stopped == from_store.stopped


def test_a_finished_grid_trains_nothing_and_says_so(store, tiny_dir, monkeypatch):
    folder, spec, uri, experiment_id, parent = store
    monkeypatch.setenv("MNIST_DATA", str(tiny_dir))
    before = tracking.search(uri, experiment_id, TRAINING)
    done = sweep("run", folder / "s.yaml", "--grid", "finished", "--tracking-uri", uri)
    assert done.exit_code == 0 and "nothing to train: 6 of 6 runs already done" in done.output
    assert tracking.search(uri, experiment_id, TRAINING) == before


def test_the_index_is_rebuilt_when_deleted_damaged_or_old_and_follows_every_change(store, tmp_path):
    folder, spec, uri, experiment_id, parent = store

    def agrees():
        rows, _ = store_truth(spec, uri, experiment_id)
        assert mirrored(uri, experiment_id) == sorted(rows, key=lambda r: r.run_id)
        fields = Index(MlflowStore(uri), experiment_id).table(tags=(schema.KEY, schema.ERROR), params=("lr",),
                                                              metrics=("test_error", "lr"))
        assert sorted(fields) == sorted((r.run_id, r.status, r.start_time, r.end_time, r.name, r.artifact_uri,
                                         r.tags.get(schema.KEY), r.tags.get(schema.ERROR), r.params.get("lr"),
                                         r.metrics.get("test_error"), r.metrics.get("lr")) for r in rows)

    path = index_path(uri)
    path.unlink(missing_ok=True)
    agrees()
    path.write_bytes(b"\0not an index\0" * 500)
    agrees()
    with sqlite3.connect(path) as db:                        # an index that an older version wrote
        db.execute("pragma user_version = 2")
    agrees()

    runs = expand(spec, ["many"])
    lease = queue.claim(MlflowStore(uri), experiment_id, parent, runs[-1], spec.name, "late")   # new and RUNNING
    agrees()
    lease.log_epoch({"test_error": 0.5}, 1, flush=True)
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"x")
    assert lease.finish({"final_test_error": 0.5}, 1, agent, diverged=False, stopped=False)   # then finished
    agrees()
    finished = [r for r in tracking.search(uri, experiment_id, TRAINING) if r.status == "FINISHED"][:3]
    for row in finished:
        tracking.delete_run(uri, row.run_id)                 # deleted by hand
    agrees()
    tracking.client(uri).restore_run(finished[0].run_id)     # and one restored
    agrees()
    _, truth = store_truth(spec, uri, experiment_id)
    assert queue.read_states(MlflowStore(uri), spec.experiment, [r.key for r in expand(spec)]).states == truth
