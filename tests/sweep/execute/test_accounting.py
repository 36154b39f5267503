"""What a `sweep run` says at its end about the runs it did not finish, its exit status, and what it
leaves tidy."""
from sweep import queue
from sweep.execute import Settings, Sweep
from sweep.execute.accounting import HELD, LATER, SweepSummary, settle
from sweep.spec import expand, parse_spec


def _settled(tmp_path, summary, held=False, failed_elsewhere=False):
    store = queue.MemoryStore(tmp_path / "index")
    experiment_id = store.ensure_experiment("e")
    if held or failed_elsewhere:
        run_id = store.create_run(experiment_id, "run-1", queue.schema.claim_tags(
            parent_run_id="p", key="k1", grids=("g",), sweep="s", session="other", attempt=1,
            holder=store.host.me(), now=store.host.now(), lease=60))
        if failed_elsewhere:
            store.set_status(run_id, "FAILED")
    view = queue.QueueView(store, experiment_id, "e")
    view.refresh()
    settle(summary, view, {"k1": "run-1"}, "mine", set())
    return summary


def test_a_run_held_elsewhere_leaves_the_sweep_incomplete(tmp_path):
    summary = _settled(tmp_path, SweepSummary(total=1), held=True)
    assert summary.not_done == [("run-1", HELD)] and summary.exit_code == 3


def test_a_run_pending_after_a_command_that_trained_nothing_leaves_it_incomplete_not_done(tmp_path):
    """The command found the rest held elsewhere and did not wait; since it looked, a held run ended
    and adaptive seeds want another (or one lapsed): not done, exit 3, never 0."""
    summary = _settled(tmp_path, SweepSummary(total=1))
    assert summary.not_done == [("run-1", LATER)] and summary.exit_code == 3


def test_a_run_failed_elsewhere_after_a_command_that_trained_nothing_leaves_it_incomplete(tmp_path):
    """Its next `sweep run` retries it (failures count per command): not done, exit 3."""
    summary = _settled(tmp_path, SweepSummary(total=1), failed_elsewhere=True)
    assert summary.not_done == [("run-1", LATER)] and summary.exit_code == 3


def test_a_run_pending_after_a_command_that_trained_is_not_trained(tmp_path):
    summary = _settled(tmp_path, SweepSummary(total=1, parent_run_id="p"))
    assert summary.not_done == [("run-1", "not trained")] and summary.exit_code == 1


class NoPool:
    def round(self, jobs, n_jobs):
        raise AssertionError("nothing was to be trained")


def test_a_claim_left_running_at_a_key_done_by_another_run_is_ended_by_the_next_sweep(tmp_path):
    """Its claimant was killed between creating its run and checking it, and another attempt then
    finished the key: no claim comes to that key again, so the sweep that finds it done ends it."""
    spec = parse_spec("experiment: e\ngrids:\n  g: {lr: [0.1]}\n", "s.yaml")
    [planned] = expand(spec)
    store = queue.MemoryStore(tmp_path / "index")
    experiment_id = store.ensure_experiment("e")
    lease = queue.claim(store, experiment_id, "p", planned, "s", "first")
    assert lease.finish({"final_test_error": 0.1}, 1, None, diverged=False, stopped=False)
    left = store.create_run(experiment_id, planned.name, queue.schema.claim_tags(
        parent_run_id="p", key=planned.key, grids=("g",), sweep="s", session="killed", attempt=1,
        holder="elsewhere:1:1.00", now=store.host.now() - 600, lease=60))
    summary = Sweep(spec, store, Settings(), pool=NoPool()).run()
    assert summary.exit_code == 0 and summary.already_done == 1
    ended = queue.schema.decode(store.run(left))
    assert ended.status == "KILLED" and "done by another run" in ended.error
