"""`sweep` at its edges: Ctrl-C at any moment, and stores, servers and clusters that cannot be used.
Each ends with one line on stderr and its exit status, within seconds, never a traceback."""
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sweep.cli import main
from sweep.execute.dispatch import BackendError, backend_session
from sweep.tracking import location as store
from sweep.tracking.location import StoreError

from conftest import ROOT, write_spec

PROGRESS = re.compile(r"\s*\d+%\|")  # `sweep run`'s progress bar, on stderr
TINY = "experiment: tiny\ndefaults: {epochs: 1}\ngrids:\n  g: {lr: [0.1]}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture
def tracked(env):
    """A sweep file and a store that already holds its experiment, as after any `sweep run`."""
    uri = store.open_store(os.environ["MLFLOW_TRACKING_URI"])
    MlflowClient(uri).create_experiment("tiny")
    return write_spec(env, TINY)


# --- Ctrl-C -----------------------------------------------------------------------------------------

def start(args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def before_entry(proc, out: str, err: str) -> bool:
    """Ctrl-C before `sweep.cli.entry` has run, while Python starts and finds the package: no program
    can change what happens there. Before Python handles SIGINT at all the process dies of it;
    later Python prints its own traceback."""
    if proc.returncode == -signal.SIGINT and not out and not err:
        return True
    return "Traceback" in err and ", in entry" not in err


def check_interrupted(proc, out: str, err: str, complete: str) -> None:
    """Exit 130 with one line, or 0 when the command had finished. -SIGINT (the shell's 130 too) only
    when the command had finished: Python restores the default handlers in its last instants."""
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert len(lines) <= 1, err
    if proc.returncode == 130:
        assert lines and "interrupted" in lines[0], err
    else:
        assert proc.returncode in (0, -signal.SIGINT), (proc.returncode, err)
        assert complete in out, (proc.returncode, out, err)


def interrupted(args_and_delays):
    """Start every command at once; send each SIGINT its delay after its own start."""
    launched = [(start(args), time.time() + delay) for args, delay in args_and_delays]
    for proc, moment in sorted(launched, key=lambda pm: pm[1]):
        time.sleep(max(0.0, moment - time.time()))
        proc.send_signal(signal.SIGINT)
    return [(proc, *proc.communicate(timeout=120)) for proc, _ in launched]


SHARES = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8)  # of the time a command takes, uninterrupted


@pytest.mark.system
def test_ctrl_c_at_any_moment_of_plan_and_status(tracked):
    """From loading modules and parsing options to reading the store and printing: one at a time
    (a command of half a second started beside eleven others would spend the interrupts starting)."""
    commands = {"plan": "1 runs in experiment 'tiny'", "status": "experiment 'tiny': 1 runs"}
    took = {}
    for name in commands:  # how long each takes here and now: the interrupts are spread over that
        begun = time.time()
        start((name, tracked)).communicate(timeout=120)
        took[name] = time.time() - begun
    runs = [((name, tracked), share * took[name]) for name in commands for share in SHARES]
    results = [interrupted([run])[0] for run in runs]
    for ((name, _), _), (proc, out, err) in zip(runs, results):
        if not before_entry(proc, out, err):
            check_interrupted(proc, out, err, commands[name])
    # many land inside a command (some land while Python starts, and some after a quick `plan` ended)
    assert sum(proc.returncode == 130 for proc, _, _ in results) >= len(results) // 3


@pytest.mark.system
def test_ctrl_c_during_the_start_up_of_run(tracked):
    """Before training starts (modules, data, store); later moments are the runner's and are left
    out: there runs in flight are marked KILLED first (test_sweep_run.py)."""
    results = interrupted([(("run", tracked, "--jobs", "1"), delay) for delay in (0.1, 0.5, 1.0, 2.0, 3.0)])
    checked = 0
    for proc, out, err in results:
        if "to train" in out or before_entry(proc, out, err):
            continue  # it had reached the runner, or not yet our code
        check_interrupted(proc, out, err, complete="next: sweep best")
        checked += 1
    assert checked >= 3


@pytest.mark.system
@pytest.mark.parametrize("args, last_line", [
    (["status"], "experiment 'tiny': 1 runs"),
    (["run", "--jobs", "1"], "next: sweep best"),
])
def test_ctrl_c_while_the_interpreter_shuts_down(tracked, args, last_line):
    """The output is out (flushed as the command ends), then Ctrl-C: thread joins, atexit hooks."""
    proc = start([args[0], tracked, *args[1:]])
    out = ""
    for line in proc.stdout:
        out += line
        if last_line in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    check_interrupted(proc, out + rest, err, last_line)


# --- stores ---------------------------------------------------------------------------------------

COMMANDS = {  # every command that takes --tracking-uri, with what it needs besides
    "plan": lambda spec: ["plan", spec], "status": lambda spec: ["status", spec],
    "best": lambda spec: ["best", spec], "report": lambda spec: ["report", spec],
    "run": lambda spec: ["run", spec], "ui": lambda spec: ["ui"],
}


@pytest.mark.parametrize("uri, says", [
    ("mlruns", "is a path, not a store"),
    ("file:///tmp/mlruns", "is a path, not a store"),
    ("localhost:5000", "has no scheme"),
    ("sqlite://", "sqlite:///PATH/mlflow.db"),
])
def test_a_tracking_uri_that_names_no_store_is_one_line(env, monkeypatch, uri, says):
    spec = write_spec(env, TINY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name, args in COMMANDS.items():
        result = CliRunner().invoke(main, args(spec))
        assert result.exit_code == 2, (name, result.output)
        assert says in one_line(result.stderr), name
    assert not (env / "mlruns").exists() and not (env / "mlflow.db").exists()


@pytest.fixture
def fake_server():
    """An HTTP server on 127.0.0.1: /health answers a chosen status, anything else 404; it keeps the
    paths it was asked for."""
    state = {"health": 200, "asked": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            state["asked"].append(self.path)
            self.send_response(state["health"] if self.path == "/health" else 404)
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_a_server_is_asked_once_briefly(fake_server):
    url, state = fake_server
    assert store.open_store(url) == url and store.existing_store(url, "") == url
    state["health"] = 503
    with pytest.raises(StoreError) as caught:
        store.store_exists(url)
    assert url in one_line(str(caught.value)) and "503" in str(caught.value)


@pytest.mark.system
def test_an_unreachable_server_is_one_line_within_seconds(env):
    """MLflow itself would retry for minutes (252 s measured before) before giving up."""
    spec = write_spec(env, TINY)
    url = f"http://127.0.0.1:{free_port()}"
    for name, args in COMMANDS.items():
        begun = time.time()
        result = CliRunner().invoke(main, [*args(spec), "--tracking-uri", url])
        assert time.time() - begun < 10, name
        assert result.exit_code == 2, (name, result.output)
        line = one_line(result.stderr)
        assert url in line and "cannot be reached (Connection refused)" in line, name


@pytest.mark.parametrize("case", ["file where the folder should be", "read-only store"])
def test_run_refuses_a_local_store_it_cannot_write_in_one_line(env, monkeypatch, immutable, case):
    spec = write_spec(env, TINY)
    if case == "read-only store":
        db = Path(store.open_store(os.environ["MLFLOW_TRACKING_URI"])[len("sqlite:///"):])
        immutable(db)
        says = "cannot be written"
    else:
        (env / "FILE").write_text("a file")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env}/FILE/mlflow.db")
        says = "is a file, not a folder"
    begun = time.time()
    result = CliRunner().invoke(main, ["run", spec, "--jobs", "1"])
    assert time.time() - begun < 10
    assert result.exit_code == 2 and says in one_line(result.stderr), result.output


# --- clusters -------------------------------------------------------------------------------------

@pytest.mark.system
@pytest.mark.parametrize("backend, address", [("dask", "tcp://127.0.0.1:{port}"), ("ray", "127.0.0.1:1"),
                                              ("ray", "ray://127.0.0.1:{port}")])
def test_an_unreachable_cluster_is_one_line_within_seconds(backend, address):
    address = address.format(port=free_port())
    begun = time.time()
    with pytest.raises(BackendError) as caught:
        with backend_session(backend, address):
            pass
    assert time.time() - begun < 10
    line = one_line(str(caught.value))
    assert f"cannot reach the {'dask scheduler' if backend == 'dask' else 'ray cluster'} at {address}" in line
    assert "Connection refused" in line and "--address" in line


@pytest.mark.system
@pytest.mark.parametrize("backend, address", [("dask", "tcp://127.0.0.1:{port}"), ("ray", "127.0.0.1:1")])
def test_run_connects_to_its_cluster_before_it_writes(env, fake_server, backend, address):
    url, state = fake_server
    address = address.format(port=free_port())
    spec = write_spec(env, TINY)
    begun = time.time()
    result = CliRunner().invoke(main, ["run", spec, "--backend", backend, "--address", address,
                                       "--tracking-uri", url])
    assert time.time() - begun < 10
    assert result.exit_code == 2 and "cannot reach" in one_line(result.stderr), result.output
    assert set(state["asked"]) <= {"/health"}  # nothing read or written before the connection
