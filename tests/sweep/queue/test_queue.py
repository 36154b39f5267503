"""The queue's rules on the real MLflow store: key states, claims, leases (who may write a run's
outcome), the change feed and the parent run. The interleavings are explored in tests/sweep/queue."""
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from mnist_core import RunConfig
from sweep import queue, tracking
from sweep.queue import Host, Index, Query, QueueView, index_path, schema
from sweep.queue.schema import Attempt
from sweep.spec import PlannedRun, run_key, run_name
from sweep.tracking.location import open_store
from sweep.tracking.mlflow_store import MlflowStore

HERE = socket.gethostname()
ALIVE = Host().alive


class As(Host):
    """This machine, as another process would claim from it."""

    def __init__(self, holder: str):
        super().__init__()
        self.holder = holder

    def me(self) -> str:
        return self.holder


def rec(key="k", status="RUNNING", start=0, beat=0.0, session="s", holder="elsewhere:1:1.00", lease=60.0):
    return Attempt(uuid.uuid4().hex, status, start, key=key, heartbeat=beat, session=session, holder=holder,
                   lease=lease)


def dead_holder() -> str:
    """A process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{HERE}:{proc.pid}:1.00"


@pytest.mark.parametrize("attempts,state", [
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
def test_key_state(attempts, state):
    assert queue.key_state(attempts, now=1000.0, alive=ALIVE) == state


def test_a_holder_known_to_be_gone_lapses_at_once():
    me = Host().me()
    assert queue.key_state([rec(beat=time.time(), holder=dead_holder())], time.time(), ALIVE) == "pending"
    assert queue.key_state([rec(beat=time.time(), holder=me)], time.time(), ALIVE) == "running"
    assert ALIVE(me) is True and ALIVE("another-host:1:1.00") is None and ALIVE(f"{HERE}:1:123") is None


def test_a_holder_is_known_across_a_clock_set_by_whole_seconds():
    """The kernel's boot time, from which a process's start time is read, moves by whole seconds when
    the clock is set: the same process then reads whole seconds apart, and is still alive; a start
    that differs otherwise is another process."""
    host, pid, start = Host().me().rsplit(":", 2)
    for shift in (1, -1, 7):
        assert ALIVE(f"{host}:{pid}:{float(start) + shift:.2f}") is True
    for shift in (0.01, 0.5, -0.37, 2 * 3600):
        assert ALIVE(f"{host}:{pid}:{float(start) + shift:.2f}") is False


def test_states_counts_and_errors():
    attempts = [rec("a", "FINISHED"), Attempt("x", "FAILED", 1, key="b", error="boom\ntrace")]
    states = queue.states(["a", "b", "c"], attempts, now=5.0, alive=ALIVE)
    assert states == {"a": "done", "b": "failed", "c": "pending"}
    assert queue.count(states) == {"pending": 1, "running": 0, "failed": 1, "done": 1}
    assert queue.last_errors(attempts) == {"b": "boom\ntrace"}


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return open_store(f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db")


@pytest.fixture(scope="module")
def store(uri):
    return MlflowStore(uri)


def _planned(**settings):
    config = RunConfig(**settings)
    return PlannedRun(config, run_key(config), run_name(config), ("g",))


def _experiment(store, name):
    experiment = store.ensure_experiment(name)
    return experiment, queue.parent_run(store, experiment, "s", {})


def _agent(tmp_path):
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"x")
    return agent


def test_concurrent_claims_give_the_run_to_exactly_one(store):
    experiment, parent = _experiment(store, "claims")
    planned = _planned(lr=0.5)
    won = []

    def contender(i):
        lease = queue.claim(store, experiment, parent, planned, "s", f"session{i}")
        if lease:
            won.append(lease.run_id)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert [a.run_id for a in queue.key_attempts(store, experiment, planned.key)] == won  # losers withdrew
    assert queue.claim(store, experiment, parent, planned, "s", "late") is None  # held and live
    store.set_status(won[0], "FINISHED")
    assert queue.claim(store, experiment, parent, planned, "s", "later") is None  # done


def test_a_dead_holders_claim_is_taken_over_at_once(uri, store):
    experiment, parent = _experiment(store, "lapse")
    planned = _planned(lr=0.7)
    first = queue.claim(MlflowStore(uri, As(dead_holder())), experiment, parent, planned, "s", "dead")
    second = queue.claim(store, experiment, parent, planned, "s", "alive")
    assert second and second.run_id != first.run_id
    ended = {a.run_id: a for a in queue.key_attempts(store, experiment, planned.key)}
    assert ended[first.run_id].status == "KILLED" and "is gone" in ended[first.run_id].error


def test_a_lease_that_lapsed_is_given_up_never_finished(store, tmp_path):
    experiment, parent = _experiment(store, "suspended")
    planned = _planned(lr=0.8)
    lease = queue.claim(store, experiment, parent, planned, "s", "s1", lease_seconds=6)
    assert lease.log_epoch({"test_error": 0.5}, 1, flush=True)
    lease.confirmed -= 5.5  # as if the process had been suspended for 5.5 s of its 6 s lease
    assert not lease.log_epoch({"test_error": 0.4}, 2)
    assert "lease lapsed" in lease.lost and not lease.held
    assert lease.finish({}, 2, _agent(tmp_path), diverged=False, stopped=False) is False
    [run] = queue.key_attempts(store, experiment, planned.key)
    assert run.status == "KILLED" and "lease lapsed" in run.error      # pending again for whoever comes next
    assert queue.key_state([run], time.time(), ALIVE) == "pending"


def test_a_run_ended_by_another_process_is_lost_to_its_holder(store):
    experiment, parent = _experiment(store, "ended")
    planned = _planned(lr=0.9)
    lease = queue.claim(store, experiment, parent, planned, "s", "s1", lease_seconds=6)
    queue.end_attempt(store, experiment, lease.run_id, "KILLED", "claim lapsed: test")
    with queue.KeepAlive(store, [lease], store.host.me(), parent, check_every=0.1):
        deadline = time.time() + 10
        while lease.held and time.time() < deadline:
            time.sleep(0.1)
    assert "ended by another process (KILLED: claim lapsed: test)" in lease.lost
    assert not lease.log_epoch({"test_error": 0.1}, 1)


def test_a_holder_late_past_its_clock_check_cannot_finish_a_run_another_process_ended(store, tmp_path):
    """The holder looked at its clock in time, then stopped (suspended) while another process ended its
    lapsed run: its finish comes too late, and the run stays as the other one ended it."""
    experiment, parent = _experiment(store, "late")
    planned = _planned(lr=0.95)
    lease = queue.claim(store, experiment, parent, planned, "s", "s1", lease_seconds=6)
    queue.end_attempt(MlflowStore(store.uri, As("claimant:1:1.00")), experiment, lease.run_id, "KILLED",
                      "claim lapsed: its holder stopped heartbeating")
    assert lease.finish({"test_error": 0.1}, 1, _agent(tmp_path), diverged=False, stopped=False) is False
    assert lease.lost == "run ended by another process (KILLED)"
    [run] = queue.key_attempts(store, experiment, planned.key)
    assert run.status == "KILLED" and "stopped heartbeating" in run.error


class Writes(MlflowStore):
    """Records the params of each write made through it."""

    def __init__(self, uri):
        super().__init__(uri)
        self.params = []

    def write(self, run_id, metrics=(), params=None, tags=None):
        self.params.append(dict(params or {}))
        super().write(run_id, metrics, params, tags)


def test_a_runs_params_go_with_its_ending_unless_a_beat_took_them_before(uri, store, tmp_path):
    """A short run's params are written in the request that commits its ending (MLflow: one
    transaction with it), not with its final heartbeat; a longer run's first beat takes them."""
    experiment, parent = _experiment(store, "params")
    writes = Writes(uri)
    short = queue.claim(writes, experiment, parent, _planned(lr=0.97), "s", "s1")
    short.log_params({"lr": "0.97"})
    assert short.finish({"test_error": 0.1}, 1, _agent(tmp_path), diverged=False, stopped=False)
    *before, ending = writes.params
    assert ending == {**schema.ended("FINISHED"), "lr": "0.97"} and not any(before)
    [run] = store.find(experiment, Query(run_ids=(short.run_id,)))
    assert run.status == "FINISHED" and run.params["lr"] == "0.97"
    longer = queue.claim(writes, experiment, parent, _planned(lr=0.98), "s", "s1")
    longer.log_params({"lr": "0.98"})
    assert longer.log_epoch({"test_error": 0.2}, 1, flush=True) and writes.params[-1] == {"lr": "0.98"}
    assert longer.finish({"test_error": 0.1}, 1, _agent(tmp_path), diverged=False, stopped=False)
    assert writes.params[-1] == schema.ended("FINISHED")


def test_a_finish_its_holder_committed_is_completed_by_the_next_claimant(store):
    """The holder committed FINISHED and stopped before setting the status: the run is done, and the
    claimant that finds it lapsed sets it FINISHED instead of taking it over."""
    experiment, parent = _experiment(store, "committed")
    planned = _planned(lr=0.96)
    lease = queue.claim(store, experiment, parent, planned, "s", "s1", lease_seconds=6)
    assert queue.lease.commit_ending(store, experiment, lease.run_id, "FINISHED") == "FINISHED"
    store.write(lease.run_id, tags=schema.heartbeat(time.time() - 60))  # and its lease lapsed
    assert queue.claim(MlflowStore(store.uri, As("claimant:1:1.00")), experiment, parent, planned, "s", "s2") is None
    [run] = queue.key_attempts(store, experiment, planned.key)
    assert run.status == "FINISHED" and run.run_id == lease.run_id


def test_sweeps_starting_at_once_share_one_parent_run(store):
    experiment = store.ensure_experiment("parents")
    start, ids = threading.Barrier(4), []

    def sweep(i):
        start.wait()
        ids.append(queue.parent_run(MlflowStore(store.uri, As(f"elsewhere{i}:1:1.00")), experiment, "p", {"runs": 3}))

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parents = store.find(experiment, Query(tags=((schema.KIND, schema.PARENT),)))
    assert len(ids) == 4 and len(set(ids)) == 1 and [p.run_id for p in parents] == ids[:1]
    assert parents[0].params == {"runs": "3", schema.PARENT_STATE: schema.KEPT}
    assert not schema.decode(parents[0]).provisional


class Earlier(As):
    """Another process of this machine that made its runs `ago` seconds back."""

    def __init__(self, holder: str, ago: float):
        super().__init__(holder)
        self.ago = ago

    def now(self) -> float:
        return time.time() - self.ago


def test_an_abandoned_candidate_parent_is_withdrawn_but_one_its_creator_kept_stays(store):
    experiment = store.ensure_experiment("candidates")
    creator = MlflowStore(store.uri, Earlier("elsewhere:1:1.00", 60))
    abandoned = creator.create_run(experiment, "sweep:p", schema.parent_tags("p", "elsewhere:1:1.00"))
    assert queue.find_parent(store, experiment, "p") is None  # a candidate is no parent run yet
    parent = queue.parent_run(store, experiment, "p", {})
    [gone] = store.find(experiment, Query(run_ids=(abandoned,), view="all"))
    assert parent != abandoned and gone.deleted and gone.params[schema.PARENT_STATE] == schema.WITHDRAWN
    # a candidate as old, whose keeping committed (its tag written after did not land): kept, not withdrawn
    slow = creator.create_run(experiment, "sweep:q", schema.parent_tags("q", "elsewhere:1:1.00"))
    queue.base.commit_once(creator, experiment, slow, schema.PARENT_STATE, schema.KEPT)
    assert queue.tidy_parent(store, experiment, "q").run_id == slow
    assert queue.parent_run(store, experiment, "q", {}) == slow


def test_a_leftover_candidate_of_this_process_does_not_block_its_parent_run(store):
    """Say the server made a retried create_run twice: this process's other, older candidate is
    abandoned like anyone's, not taken for the one it is checking."""
    experiment = store.ensure_experiment("leftover")
    me = store.host.me()
    leftover = MlflowStore(store.uri, Earlier(me, 60)).create_run(experiment, "sweep:p", schema.parent_tags("p", me))
    started = time.time()
    parent = queue.parent_run(store, experiment, "p", {})
    assert parent != leftover and time.time() - started < 5
    assert store.find(experiment, Query(run_ids=(leftover,), view="deleted"))


def test_ending_a_run_deleted_meanwhile_ends_nothing_and_raises_nothing(store):
    experiment, parent = _experiment(store, "deleted")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.98), "s", "s1")
    store.delete_run(lease.run_id)  # a claim withdrawn late, as another process ends it
    assert queue.end_attempt(store, experiment, lease.run_id, "KILLED", "claim lapsed: test") == queue.base.DELETED


def test_of_endings_committed_at_once_exactly_one_stands(store):
    experiment, parent = _experiment(store, "endings")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.97), "s", "s1")
    endings = ["FINISHED", "KILLED", "FAILED", "KILLED"]
    start, committed = threading.Barrier(len(endings)), [None] * len(endings)

    def commit(i):
        start.wait()
        committed[i] = queue.lease.commit_ending(store, experiment, lease.run_id, endings[i])

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(endings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [row] = store.find(experiment, Query(run_ids=(lease.run_id,)))
    assert set(committed) == {row.params[schema.ENDED]}


class Counting(MlflowStore):
    """The real store, counting its writes and failing them while `out_of_reach`."""

    def __init__(self, uri):
        super().__init__(uri)
        self.writes, self.out_of_reach = 0, False

    def write(self, *args, **kwargs):
        if self.out_of_reach:
            raise queue.TrackingError("store out of reach")
        self.writes += 1
        return super().write(*args, **kwargs)


def test_metrics_are_written_with_the_heartbeat_not_one_request_per_epoch(uri, tmp_path):
    store = Counting(uri)
    experiment, parent = _experiment(store, "batched")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.11), "s", "s1")
    for epoch in range(1, 11):
        lease.log_epoch({"test_error": 1 / epoch, "train_error": 0.5 / epoch}, epoch)
    before = store.writes
    assert lease.finish({"final_test_error": 0.1}, 10, _agent(tmp_path), diverged=False, stopped=False)
    assert store.writes - before <= 3  # ten epochs, the summary and the tags in at most a few requests
    history = tracking.metric_history(uri, lease.run_id, "test_error")
    assert [step for step, _ in history] == list(range(1, 11)) and history[-1][1] == 0.1


def test_a_heartbeat_that_fails_to_write_keeps_what_it_held_for_the_next_one(uri):
    store = Counting(uri)
    experiment, parent = _experiment(store, "retried")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.12), "s", "s1")
    lease.log_params({"lr": 0.12})
    store.out_of_reach = True
    with pytest.raises(queue.TrackingError):
        lease.log_epoch({"test_error": 0.5}, 1, flush=True, tags=schema.curve([0.5]))
    store.out_of_reach = False
    assert lease.log_epoch({"test_error": 0.25}, 2, flush=True)
    [run] = store.find(experiment, Query(run_ids=(lease.run_id,)))
    assert run.params["lr"] == "0.12" and schema.decode(run).curve == (0.5,)
    assert tracking.metric_history(uri, lease.run_id, "test_error") == [(1, 0.5), (2, 0.25)]


def _truth(store, experiment):
    return {r.run_id: (r.status, r.metrics.get("test_error"))
            for r in store.find(experiment, Query(tags=((schema.KIND, schema.TRAIN),)))}


def _mirrored(store, experiment):
    index = Index(store, experiment)
    index.sync()
    return {r.run_id: (r.status, r.metrics.get("test_error")) for r in index.rows()}


def test_the_index_is_rebuilt_when_deleted_and_never_disagrees_with_the_store(uri, store, tmp_path):
    experiment, parent = _experiment(store, "indexed")
    leases = [queue.claim(store, experiment, parent, _planned(lr=lr), "s", "s1") for lr in (0.01, 0.02, 0.03, 0.04)]
    assert _mirrored(store, experiment) == _truth(store, experiment) and len(_truth(store, experiment)) == 4
    leases[0].log_epoch({"test_error": 0.3}, 1)
    assert leases[0].finish({"test_error": 0.25}, 1, _agent(tmp_path), False, False)
    leases[1].fail("boom")
    leases[2].kill("stop")
    assert _mirrored(store, experiment) == _truth(store, experiment)
    client = tracking.client(uri)
    client.delete_run(leases[0].run_id)                                   # a finished run deleted by hand
    client.delete_run(leases[3].run_id)                                   # a RUNNING one too
    assert _mirrored(store, experiment) == _truth(store, experiment)
    assert leases[0].run_id not in _mirrored(store, experiment)
    client.restore_run(leases[0].run_id)                                  # and one brought back
    assert _mirrored(store, experiment) == _truth(store, experiment)
    assert leases[0].run_id in _mirrored(store, experiment)
    index_path(uri).unlink()                                              # the cache is deleted: rebuilt
    assert _mirrored(store, experiment) == _truth(store, experiment)
    index_path(uri).write_bytes(b"not a database at all" * 100)           # or damaged: rebuilt
    assert _mirrored(store, experiment) == _truth(store, experiment)


def test_each_reader_has_its_own_cursor_so_no_reader_hides_a_change_from_another(store, tmp_path):
    experiment, parent = _experiment(store, "cursors")
    sweep, status = QueueView(store, experiment), QueueView(store, experiment)
    lease = queue.claim(store, experiment, parent, _planned(lr=0.21), "s", "s1")
    sweep.refresh()
    assert sweep.states([lease.key]) == {lease.key: "running"}
    assert lease.finish({"final_test_error": 0.1}, 1, _agent(tmp_path), False, False)
    status.refresh()                  # `sweep status` syncs the shared mirror first: the run ended
    sweep.refresh()                   # the sweep's own sync finds nothing new in the store, yet
    assert sweep.states([lease.key]) == {lease.key: "done"}
    before = sweep.cursor
    sweep.refresh()
    assert sweep.cursor == before     # nothing changed: nothing applied twice, the cursor stays


class Late(MlflowStore):
    """The real store, but a sync's reads can come back late: what `record` saw, answered again in
    the same order once `replay` is set (a process that read the store, then stalled before it wrote)."""

    def __init__(self, uri):
        super().__init__(uri)
        self.answers, self.record, self.replay = [], False, False

    def find(self, experiment_id, query):
        if self.replay:
            return self.answers.pop(0)
        found = super().find(experiment_id, query)
        if self.record:
            self.answers.append(found)
        return found


def test_a_slower_sync_never_puts_back_an_older_state_of_a_run(uri, store, tmp_path):
    experiment, parent = _experiment(store, "ordered")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.31), "s", "s1")
    late = Late(uri)
    slow, fast = Index(late, experiment), Index(store, experiment)
    fast.sync()
    late.record = True
    slow.sync()                                                            # it read the run RUNNING ...
    assert lease.finish({"final_test_error": 0.1}, 1, _agent(tmp_path), False, False)
    fast.sync()                                                            # ... another saw it FINISHED ...
    late.record, late.replay = False, True
    slow.sync()                                                            # ... then it wrote what it had read
    assert {r.run_id: r.status for r in fast.rows()} == {lease.run_id: "FINISHED"}
    assert QueueView(store, experiment).refresh(sync=False).states([lease.key]) == {lease.key: "done"}


def test_a_mirror_that_cannot_be_written_is_replaced_by_a_private_one(store, tmp_path, immutable):
    experiment, parent = _experiment(store, "readonly")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.41), "s", "s1")
    path = tmp_path / "mirror" / "index.sqlite"
    index = Index(store, experiment, path=path)
    index.sync()
    immutable(path)                                  # unwritable even for root
    other = Index(store, experiment, path=path)
    assert lease.finish({"final_test_error": 0.1}, 1, _agent(tmp_path), False, False)
    other.sync()                                     # cannot write the file: goes on in memory, as right
    assert {r.run_id: r.status for r in other.rows()} == {lease.run_id: "FINISHED"}


def test_a_mirror_that_cannot_take_a_new_column_is_read_from_a_private_one_as_right(store, tmp_path, immutable):
    experiment, parent = _experiment(store, "readonly-fields")
    lease = queue.claim(store, experiment, parent, _planned(lr=0.43), "s", "s1")
    assert lease.finish({"final_test_error": 0.1}, 1, _agent(tmp_path), False, False)
    path = tmp_path / "mirror" / "index.sqlite"
    Index(store, experiment, path=path).sync()
    immutable(path)
    index = Index(store, experiment, path=path)
    index.sync()                                     # up to date: nothing to write, read from the file
    rows = index.table(tags=(schema.KEY,))           # a column the file lacks and cannot be given
    assert [(row[0], row[-1]) for row in rows] == [(lease.run_id, lease.key)]


def test_a_stalled_claim_is_never_kept(uri, store):
    experiment, parent = _experiment(store, "slow-claim")
    planned = _planned(lr=0.51)

    class Slow(Host):  # its clock jumps past the lease between creating its run and checking it
        def __init__(self):
            super().__init__()
            self.jumps = iter([0.0, 0.0, 20.0])

        def now(self):
            return time.time() + next(self.jumps, 20.0)

    assert queue.claim(MlflowStore(uri, Slow()), experiment, parent, planned, "s", "s1", lease_seconds=6,
                       tries=1) is None
    assert [a.status for a in queue.key_attempts(store, experiment, planned.key)] == []  # withdrawn


def test_a_finished_parent_run_is_never_killed_and_only_its_owner_ends_it_otherwise(uri, store):
    experiment = store.ensure_experiment("parents")
    parent = queue.parent_run(store, experiment, "p", {})
    other = MlflowStore(uri, As(f"{HERE}:{os.getppid()}:1.00"))
    queue.end_parent(other, experiment, parent, "KILLED", {"done": 0})           # not its owner: left RUNNING
    assert queue.find_parent(store, experiment, "p").status == "RUNNING"
    queue.end_parent(store, experiment, parent, "FINISHED", {"done": 3})
    queue.end_parent(store, experiment, parent, "KILLED", {"done": 0}, "interrupted")
    assert queue.find_parent(store, experiment, "p").status == "FINISHED"


def test_a_local_store_gets_an_index_on_tag_values_so_that_claims_do_not_read_every_run(tmp_path):
    uri = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    store = MlflowStore(uri)
    queue.key_attempts(store, store.ensure_experiment("tag-index"), "some-key")  # the first lookup by a tag
    with sqlite3.connect(uri[len("sqlite:///"):]) as db:
        plan = " ".join(str(row) for row in db.execute(
            "explain query plan select run_uuid from tags where key = ? and value = ?", (schema.KEY, "k")))
    assert "sweep_tags_key_value" in plan
