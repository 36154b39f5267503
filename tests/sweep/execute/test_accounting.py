"""What a `sweep run` says at its end about the runs it did not finish, and its exit status."""
from sweep import queue
from sweep.execute.accounting import HELD, LATER, SweepSummary, settle


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
