"""A local worker's store requests made by the sweep's process (sweep.tracking.relay): a run claimed,
trained and finished through it is the run the store would hold; errors come back as one line; a
request cut short by a second Ctrl-C leaves no answer behind for the next; once the sweep's process
is gone the worker uses the store itself."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from mnist_core import RunConfig
from mnist_core.data import DataPart
from sweep import queue
from sweep.queue import TrackingError, schema
from sweep.spec import PlannedRun, run_key, run_name
from sweep.tracking.mlflow_store import MlflowStore
from sweep.tracking.relay import Relay, RelayStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def uri(tmp_path, template_store):
    shutil.copy(template_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


class Counting(MlflowStore):
    """The store as the relaying process makes the requests: which ones reached it."""

    def __init__(self, uri):
        super().__init__(uri)
        self.made = []

    def create_run(self, experiment_id, name, tags):
        self.made.append("create_run")
        return super().create_run(experiment_id, name, tags)

    def write(self, run_id, metrics=(), params=None, tags=None):
        self.made.append("write")
        return super().write(run_id, metrics, params, tags)


@pytest.fixture
def relay(uri):
    relay = Relay(Counting(uri))
    yield relay
    relay.close()


def _planned(lr=0.1):
    config = RunConfig(lr=lr)
    return PlannedRun(config, run_key(config), run_name(config), ("g",))


def test_a_run_claimed_and_finished_through_the_relay_is_the_run_the_store_holds(relay, uri, tmp_path):
    worker = pickle.loads(pickle.dumps(relay.worker_store()))  # as a worker process gets it
    store = MlflowStore(uri)
    experiment = store.ensure_experiment("e")
    parent = queue.parent_run(store, experiment, "s", {})
    lease = queue.claim(worker, experiment, parent, _planned(), "s", "session")
    assert lease is not None and queue.claim(worker, experiment, parent, _planned(), "s", "other") is None
    worker.log_inputs(lease.run_id, [DataPart("mnist-test", "test", "d" * 8, str(tmp_path), ("a", "b"), 10)])
    lease.log_params({"lr": 0.1})
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"agent")
    assert lease.finish({"test_error": 0.25}, 1, agent, diverged=False, stopped=False)

    [run] = store.find(experiment, queue.Query(run_ids=(lease.run_id,)))
    assert (run.status, run.params["lr"], run.params[schema.ENDED], run.metrics["test_error"]) == (
        "FINISHED", "0.1", "FINISHED", 0.25)
    assert run.tags[schema.HOLDER] == worker.host.me()  # the worker holds the lease, not the relaying process
    assert (tmp_path / "mlruns").exists() and any(p.name == "mnist_agent.pt" for p in (tmp_path / "mlruns").rglob("*"))
    # the lost fence holds through it too: the run is ended, another ending is refused
    assert queue.end_attempt(worker, experiment, lease.run_id, "KILLED", "late") == "FINISHED"
    assert relay.store.made.count("create_run") == 1 and "write" in relay.store.made  # made by the relaying process


def test_a_refused_request_is_one_trackingerror_and_the_next_one_is_answered(relay, uri):
    worker = relay.worker_store()
    experiment = MlflowStore(uri).ensure_experiment("e")
    with pytest.raises(TrackingError, match="tracking store") as refused:
        worker.write("no-such-run", params={"a": "1"})
    assert "\n" not in str(refused.value)
    assert worker.create_run(experiment, "next", {}) in {r.run_id for r in worker.find(experiment, queue.Query())}
    assert relay.store.made == ["write", "create_run"]  # both made by the relaying process


class Slow(MlflowStore):
    seconds = 1.0

    def create_run(self, experiment_id, name, tags):
        time.sleep(self.seconds)
        return super().create_run(experiment_id, name, tags)


class Slower(Slow):
    seconds = 4.0


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="signals a thread")
def test_a_request_cut_short_by_a_second_ctrl_c_leaves_no_answer_for_the_next_one(uri):
    relay = Relay(Slow(uri))
    try:
        worker = relay.worker_store()
        experiment = MlflowStore(uri).ensure_experiment("e")
        main = threading.main_thread().ident
        for delay in (0.2, 0.4):  # the first waits for the answer; the second acts at once
            threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            worker.create_run(experiment, "cut short", {})
        second = worker.create_run(experiment, "second", {})
        names = {r.run_id: r.name for r in MlflowStore(uri).find(experiment, queue.Query())}
        assert names[second] == "second"
    finally:
        relay.close()


STRANGER = """
import sys
from sweep.queue import TrackingError
from sweep.tracking.relay import RelayStore
uri, address, key, experiment = sys.argv[1:]
store = RelayStore(uri, bytes.fromhex(address), bytes.fromhex(key))

class OnlyHere:  # the sweep's process cannot unpickle it
    pass

try:
    store.create_run(experiment, "strange", {"tag": OnlyHere()})
except TrackingError as exc:
    print("refused:", exc)
print(store.create_run(experiment, "plain", {}))
"""


def test_a_request_the_sweeps_process_cannot_read_is_refused_and_the_next_one_is_made(relay, uri):
    experiment = MlflowStore(uri).ensure_experiment("e")
    worker = relay.worker_store()
    address = worker.address if isinstance(worker.address, bytes) else worker.address.encode()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", STRANGER, uri, address.hex(), worker.authkey.hex(), experiment],
                          capture_output=True, text=True, env=env, timeout=120)
    refused, made = done.stdout.splitlines()
    assert refused.startswith("refused: tracking store") and "OnlyHere" in refused, done.stderr
    assert [r.name for r in MlflowStore(uri).find(experiment, queue.Query(run_ids=(made,)))] == ["plain"]


WAITING = """
import sys
from sweep.tracking.relay import RelayStore
uri, address, key, experiment = sys.argv[1:]
store = RelayStore(uri, bytes.fromhex(address), bytes.fromhex(key))
print("sending", flush=True)
store.create_run(experiment, "from a stopped worker", {})
"""


@pytest.mark.system
def test_a_request_of_a_worker_stopped_while_it_waited_is_never_made(uri):
    relay = Relay(Slower(uri))
    try:
        address = relay.worker_store().address
        address = address if isinstance(address, bytes) else address.encode()
        experiment = MlflowStore(uri).ensure_experiment("e")
        busy = threading.Thread(target=relay.worker_store().create_run, args=(experiment, "first", {}))
        busy.start()  # the relay is busy with it for seconds
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        key = relay.worker_store().authkey.hex()
        waiting = subprocess.Popen([sys.executable, "-c", WAITING, uri, address.hex(), key, experiment],
                                   stdout=subprocess.PIPE, text=True, env=env)
        assert waiting.stdout.readline().strip() == "sending"
        time.sleep(0.2)
        waiting.kill()  # as a round's workers are stopped after a Ctrl-C
        waiting.wait()
        busy.join()
        relay.drain()
        time.sleep(0.5)
        assert [r.name for r in MlflowStore(uri).find(experiment, queue.Query())] == ["first"]
    finally:
        relay.close()


SERVE = """
import sys, time
from sweep.tracking.mlflow_store import MlflowStore
from sweep.tracking.relay import Relay

class Dying(MlflowStore):
    def set_status(self, run_id, status):
        import os
        os._exit(9)  # the sweep's process killed in the middle of a worker's request

    def create_run(self, experiment_id, name, tags):
        if name == "dies":
            import os
            os._exit(9)
        return super().create_run(experiment_id, name, tags)

relay = Relay(Dying(sys.argv[1]))
store = relay.worker_store()
address = store.address if isinstance(store.address, bytes) else store.address.encode()
print(address.hex(), store.authkey.hex(), flush=True)
time.sleep(120)
"""


def _serving(uri):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    serving = subprocess.Popen([sys.executable, "-c", SERVE, uri], stdout=subprocess.PIPE, text=True, env=env)
    address, key = serving.stdout.readline().split()
    return serving, RelayStore(uri, bytes.fromhex(address), bytes.fromhex(key))


@pytest.mark.system
def test_a_run_created_as_the_sweeps_process_died_is_left_to_the_store_to_tell(uri):
    serving, worker = _serving(uri)
    try:
        experiment = MlflowStore(uri).ensure_experiment("e")
        with pytest.raises(TrackingError, match="gone"):  # not made again: two runs would be two claims
            worker.create_run(experiment, "dies", {})
        assert serving.wait(timeout=30) == 9
        assert worker.create_run(experiment, "next", {})  # made here
    finally:
        serving.kill()


@pytest.mark.system
def test_once_the_sweeps_process_is_gone_a_worker_uses_the_store_itself(uri):
    serving, worker = _serving(uri)
    try:
        experiment = MlflowStore(uri).ensure_experiment("e")
        run_id = worker.create_run(experiment, "r", {})       # through the relay
        worker.set_status(run_id, "KILLED")                     # it dies making it: made again here
        assert serving.wait(timeout=30) == 9
        worker.write(run_id, params={"after": "1"})             # the store itself, from now on
        fresh = RelayStore(uri, worker.address, worker.authkey)  # a first request after it: nothing to connect to
        fresh.write(run_id, params={"fresh": "1"})
        [run] = MlflowStore(uri).find(experiment, queue.Query(run_ids=(run_id,)))
        assert (run.status, run.params) == ("KILLED", {"after": "1", "fresh": "1"})
    finally:
        serving.kill()
