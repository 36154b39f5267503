"""The queue's rules: key states, claims, leases (who may write a run's outcome) and the index."""
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from mnist_core import RunConfig
from sweep import queue, tracking
from sweep.index import Index, index_path
from sweep.lease import Lease, holder_alive, this_holder
from sweep.queue import RunRecord
from sweep.spec import PlannedRun, run_key, run_name
from sweep.store import open_store

HERE = socket.gethostname()


def rec(key="k", status="RUNNING", start=0, beat=0.0, session="s", holder="elsewhere:1:1", lease=60.0):
    return RunRecord(uuid.uuid4().hex, key, status, start, beat, session, holder=holder, lease=lease)


def dead_holder() -> str:
    """A process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{HERE}:{proc.pid}:1"


@pytest.mark.parametrize("records,state", [
    ([], "pending"),
    ([rec(status="FINISHED")], "done"),
    ([rec(status="FAILED", start=1), rec(status="FINISHED", start=2)], "done"),
    ([rec(status="RUNNING", beat=990.0)], "running"),
    ([rec(status="RUNNING", beat=100.0)], "pending"),                   # its holder stopped beating: lapsed
    ([rec(status="RUNNING", beat=990.0, lease=5.0)], "pending"),        # each run says how long its lease is
    ([rec(status="KILLED")], "pending"),
    ([rec(status="FAILED", start=1)], "failed"),
    ([rec(status="FAILED", start=1), rec(status="KILLED", start=2)], "pending"),
])
def test_key_state(records, state):
    assert queue.key_state(records, now=1000.0) == state


def test_a_holder_known_to_be_gone_lapses_at_once():
    beating = rec(status="RUNNING", beat=time.time(), holder=dead_holder())
    assert queue.key_state([beating], time.time()) == "pending"
    assert queue.key_state([rec(status="RUNNING", beat=time.time(), holder=this_holder())], time.time()) == "running"
    assert holder_alive(this_holder()) is True and holder_alive("another-host:1:1") is None


def test_states_counts_and_errors():
    records = [rec("a", "FINISHED"), RunRecord("x", "b", "FAILED", 1, 0.0, "s", "boom\ntrace")]
    states = queue.states(["a", "b", "c"], records, now=5.0)
    assert states == {"a": "done", "b": "failed", "c": "pending"}
    assert queue.count(states) == {"pending": 1, "running": 0, "failed": 1, "done": 1}
    assert queue.last_errors(records) == {"b": "boom\ntrace"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db")


def _planned(**settings):
    config = RunConfig(**settings)
    return PlannedRun(config, run_key(config), run_name(config), ("g",))


def _experiment(store, name):
    experiment = tracking.ensure_experiment(store, name)
    return experiment, queue.parent_run(store, experiment, "s", {}, this_holder())


def test_concurrent_claims_give_the_run_to_exactly_one(store):
    experiment, parent = _experiment(store, "claims")
    planned = _planned(lr=0.5)
    won = []

    def contender(i):
        lease = queue.claim(store, experiment, parent, planned, "s", f"session{i}", this_holder())
        if lease:
            won.append(lease.run_id)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert [r.run_id for r in queue.key_records(store, experiment, planned.key)] == won  # losers withdrew
    assert queue.claim(store, experiment, parent, planned, "s", "late", this_holder()) is None  # held and live
    tracking.set_status(store, won[0], "FINISHED")
    assert queue.claim(store, experiment, parent, planned, "s", "later", this_holder()) is None  # done


def test_a_dead_holders_claim_is_taken_over_at_once(store):
    experiment, parent = _experiment(store, "lapse")
    planned = _planned(lr=0.7)
    first = queue.claim(store, experiment, parent, planned, "s", "dead", dead_holder())
    second = queue.claim(store, experiment, parent, planned, "s", "alive", this_holder())
    assert second and second.run_id != first.run_id
    statuses = {r.run_id: (r.status, r.error) for r in queue.key_records(store, experiment, planned.key)}
    assert statuses[first.run_id][0] == "KILLED" and "is gone" in statuses[first.run_id][1]


def test_a_lease_that_lapsed_is_given_up_never_finished(store, tmp_path):
    experiment, parent = _experiment(store, "suspended")
    planned = _planned(lr=0.8)
    lease = queue.claim(store, experiment, parent, planned, "s", "s1", this_holder(), lease_seconds=6)
    assert lease.log_epoch({"test_error": 0.5}, 1, flush=True)
    lease.confirmed -= 5.5  # as if the process had been suspended for 5.5 s of its 6 s lease
    assert not lease.log_epoch({"test_error": 0.4}, 2)
    assert "lease lapsed" in lease.lost and not lease.held
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"x")
    assert lease.finish({}, 2, agent, diverged=False, pruned=False) is False
    [run] = queue.key_records(store, experiment, planned.key)
    assert run.status == "KILLED" and "lease lapsed" in run.error      # pending again for whoever comes next
    assert queue.key_state([run], time.time()) == "pending"


def test_a_run_ended_by_another_process_is_lost_to_its_holder(store, tmp_path):
    from sweep.lease import KeepAlive

    experiment, parent = _experiment(store, "ended")
    planned = _planned(lr=0.9)
    lease = queue.claim(store, experiment, parent, planned, "s", "s1", this_holder(), lease_seconds=6)
    queue.end_attempt(store, lease.run_id, "KILLED", "claim lapsed: test")
    with KeepAlive([lease], this_holder(), parent, check_every=0.1):
        deadline = time.time() + 10
        while lease.held and time.time() < deadline:
            time.sleep(0.1)
    assert "ended by another process (KILLED: claim lapsed: test)" in lease.lost
    assert not lease.log_epoch({"test_error": 0.1}, 1)


def test_metrics_are_written_with_the_heartbeat_not_one_request_per_epoch(store, tmp_path, monkeypatch):
    experiment, parent = _experiment(store, "batched")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.11), "s", "s1", this_holder())
    writes = []
    original = tracking.log_batch
    monkeypatch.setattr(tracking, "log_batch", lambda *a, **k: writes.append(a) or original(*a, **k))
    for epoch in range(1, 11):
        lease.log_epoch({"test_error": 1 / epoch, "train_error": 0.5 / epoch}, epoch)
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"x")
    assert lease.finish({"final_test_error": 0.1}, 10, agent, diverged=False, pruned=False)
    assert len(writes) <= 3  # ten epochs, the summary and the tags in at most a few requests
    history = tracking.metric_history(store, lease.run_id, "test_error")
    assert [step for step, _ in history] == list(range(1, 11)) and history[-1][1] == 0.1


def test_a_heartbeat_that_fails_to_write_keeps_what_it_held_for_the_next_one(store, monkeypatch):
    experiment, parent = _experiment(store, "retried")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.12), "s", "s1", this_holder())
    lease.log_params({"lr": 0.12})
    original = tracking.log_batch

    def unreachable(*args, **kwargs):
        raise tracking.TrackingError("store out of reach")
    monkeypatch.setattr(tracking, "log_batch", unreachable)
    with pytest.raises(tracking.TrackingError):
        lease.log_epoch({"test_error": 0.5}, 1, flush=True, tags={"sweep.curve": "[0.5]"})
    monkeypatch.setattr(tracking, "log_batch", original)
    assert lease.log_epoch({"test_error": 0.25}, 2, flush=True)
    run = tracking.search(store, experiment, f"attributes.run_id = '{lease.run_id}'")[0]
    assert run.params["lr"] == "0.12" and run.tags["sweep.curve"] == "[0.5]"
    assert tracking.metric_history(store, lease.run_id, "test_error") == [(1, 0.5), (2, 0.25)]


def test_the_index_is_rebuilt_when_deleted_and_never_disagrees_with_the_store(store, tmp_path):
    experiment, parent = _experiment(store, "indexed")
    runs = [_planned(lr=lr) for lr in (0.01, 0.02, 0.03, 0.04)]
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"x")
    leases = [queue.claim(store, experiment, parent, p, "s", "s1", this_holder()) for p in runs]

    def truth():
        rows = tracking.search(store, experiment, "tags.`sweep.kind` = 'train'")
        return {r.run_id: (r.status, r.metrics.get("test_error")) for r in rows}

    def mirrored():
        index = Index(store, experiment)
        index.sync()
        return {r.run_id: (r.status, r.metrics.get("test_error")) for r in index.rows()}

    assert mirrored() == truth() and len(truth()) == 4                   # all RUNNING
    leases[0].log_epoch({"test_error": 0.3}, 1)
    assert leases[0].finish({"test_error": 0.25}, 1, agent, False, False)
    leases[1].fail("boom")
    leases[2].kill("stop")
    assert mirrored() == truth()
    client = tracking.client(store)
    client.delete_run(leases[0].run_id)                                   # a finished run deleted by hand
    client.delete_run(leases[3].run_id)                                   # a RUNNING one too
    assert mirrored() == truth() and leases[0].run_id not in mirrored()
    client.restore_run(leases[0].run_id)                                  # and one brought back
    assert mirrored() == truth() and leases[0].run_id in mirrored()
    index_path(store).unlink()                                            # the cache is deleted: rebuilt
    assert mirrored() == truth()
    index_path(store).write_bytes(b"not a database at all" * 100)         # or damaged: rebuilt
    assert mirrored() == truth()
