"""A whole sweep in this process, for the fast tier: the runner's loop, the workers' claims, leases
and training (torch, on the tiny data) and the MLflow store, with jobs run here one after another
instead of in worker processes; `sweep status` reads the store after every run."""
import os

from sweep import queue
from sweep.execute import Progress, Settings, Sweep
from sweep.execute.worker import execute
from sweep.queue import schema
from sweep.spec import expand, load_spec
from sweep.tracking.location import open_store
from sweep.tracking.mlflow_store import MlflowStore

from conftest import assert_each_key_finished_once, training_runs, write_spec

SPEC = """
experiment: tiny
defaults: {epochs: 2}
seeds: [1, 2]
grids:
  g: {lr: [0.05, 0.1], activation: [relu, tanh]}
  w: {width: [20]}
"""


class Here:
    """A pool that runs each job in this process, one after another: no worker process."""

    def round(self, jobs, n_jobs):
        return Ran(outcome for job in jobs for outcome in execute(job))


class Ran(list):
    crash = None


class Reading(Progress):
    """After every outcome, `sweep status`'s read of the queue, as another process would do it."""

    def __init__(self, uri, spec):
        self.uri, self.spec, self.read = uri, spec, []

    def outcome(self, outcome):
        keys = [r.key for r in expand(self.spec)]
        self.read.append(queue.read_states(MlflowStore(self.uri), self.spec.experiment, keys).states)


def test_a_sweep_run_here_tracks_every_run_once_while_a_status_reads_beside_it(env, pinned_threads):
    spec = load_spec(write_spec(env, SPEC))
    uri = open_store(os.environ["MLFLOW_TRACKING_URI"])
    reading = Reading(uri, spec)
    summary = Sweep(spec, MlflowStore(uri), Settings(jobs=2), progress=reading, pool=Here()).run()
    keys = {r.key for r in expand(spec)}
    assert summary.exit_code == 0 and summary.count("done") == len(keys) == 10
    # auto engine: each shape's runs train as one model, whatever their activation (width 20: 2), but
    # none costs more than one of the two workers' share (width 50's 8, relu and tanh: halved)
    assert sorted(o.together for o in summary.outcomes.values()) == [2, 2] + [4] * 8
    assert_each_key_finished_once(training_runs(), keys)
    done = [sum(state == "done" for state in read.values()) for read in reading.read]
    assert done == sorted(done) and done[-1] == len(keys)  # each read as new as the store: never behind
    parent = queue.find_parent(MlflowStore(uri), summary.experiment_id, spec.name)
    assert parent.status == "FINISHED"
    again = Sweep(spec, MlflowStore(uri), Settings(jobs=2), pool=Here()).run()
    assert again.to_train == 0 and again.already_done == len(keys) and again.exit_code == 0


def test_a_finished_run_deleted_is_wanted_again_by_the_sweep_that_saw_it_done(env, pinned_threads):
    spec = load_spec(write_spec(env, SPEC))
    uri = open_store(os.environ["MLFLOW_TRACKING_URI"])
    sweep = Sweep(spec, MlflowStore(uri), Settings(jobs=2), pool=Here())
    assert sweep.run().exit_code == 0 and sweep.todo() == []
    gone = training_runs()[0]
    MlflowStore(uri).delete_run(gone.info.run_id)
    assert [r.key for r in sweep.todo()] == [gone.data.tags[schema.KEY]]
