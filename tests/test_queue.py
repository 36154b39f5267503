import threading
import uuid

import pytest

from mnist_core import RunConfig
from sweep import queue, tracking
from sweep.spec import PlannedRun, run_key, run_name
from sweep.tracking import RunRecord


def rec(key="k", status="RUNNING", start=0, beat=0.0, session="s"):
    return RunRecord(uuid.uuid4().hex, key, status, start, beat, session, "", False)


@pytest.mark.parametrize("records,state", [
    ([], "pending"),
    ([rec(status="FINISHED")], "done"),
    ([rec(status="FAILED", start=1), rec(status="FINISHED", start=2)], "done"),
    ([rec(status="RUNNING", beat=990.0)], "running"),
    ([rec(status="RUNNING", beat=100.0)], "pending"),          # its holder died: not finished, not live
    ([rec(status="KILLED")], "pending"),
    ([rec(status="FAILED", start=1)], "failed"),
    ([rec(status="FAILED", start=1), rec(status="KILLED", start=2)], "pending"),
])
def test_key_state(records, state):
    assert queue.key_state(records, now=1000.0) == state


def test_states_counts_and_errors():
    records = [rec("a", "FINISHED"), rec("b", "FAILED", start=1)]
    records[1] = records[1].__class__(**{**records[1].__dict__, "error": "boom\ntrace"})
    states = queue.states(["a", "b", "c"], records, now=5.0)
    assert states == {"a": "done", "b": "failed", "c": "pending"}
    assert queue.count(states) == {"pending": 1, "running": 0, "failed": 1, "done": 1}
    assert queue.last_errors(records) == {"b": "boom\ntrace"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db")
    return uri


def _planned(**settings):
    config = RunConfig(**settings)
    return PlannedRun(config, run_key(config), run_name(config), ("g",))


def test_concurrent_claims_give_the_run_to_exactly_one(store):
    experiment = tracking.ensure_experiment(store, "claims")
    parent = tracking.parent_run(store, experiment, "s", {})
    planned = _planned(lr=0.5)
    won = []

    def contender(i):
        run_id = queue.claim(store, experiment, parent, planned, "s", f"session{i}", 1)
        if run_id:
            won.append(run_id)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    records = tracking.run_records(store, experiment, planned.key)
    assert [r.run_id for r in records] == won  # the losers deleted their claims
    assert queue.claim(store, experiment, parent, planned, "s", "late", 1) is None  # held and live
    tracking.finish_run(store, won[0], diverged=False)
    assert queue.claim(store, experiment, parent, planned, "s", "later", 1) is None  # done


def test_a_dead_holders_claim_lapses(store, monkeypatch):
    experiment = tracking.ensure_experiment(store, "lapse")
    parent = tracking.parent_run(store, experiment, "s", {})
    planned = _planned(lr=0.7)
    first = queue.claim(store, experiment, parent, planned, "s", "dead", 1)
    assert first
    monkeypatch.setattr(queue, "LEASE_SECONDS", -1.0)  # as if its heartbeat were long past
    second = queue.claim(store, experiment, parent, planned, "s", "alive", 1)
    assert second and second != first
    statuses = {r.run_id: r.status for r in tracking.run_records(store, experiment, planned.key)}
    assert statuses[first] == "KILLED"
