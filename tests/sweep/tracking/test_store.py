"""sweep.store and local stores: which store, whether it is there, and a store created safely:
interrupted at any moment it leaves no store or a complete one; several processes creating it at
once all succeed; what cannot be used is one line, at once. (Servers: test_edges.py.)"""
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from importlib.metadata import version
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweep.tracking import location as store
from sweep.tracking.location import StoreError


def uri_of(path: Path) -> str:
    return f"sqlite:///{path}"


def assert_one_line(error: StoreError, *words):
    message = str(error)
    assert "\n" not in message and error.exit_code == 2
    for word in words:
        assert word in message, message


def beside(db: Path) -> list[str]:
    """What is in the store's folder but SQLite's own log and index of a store in write-ahead-log
    mode, which stay while a connection (this test's MLflow client) is open."""
    return sorted(p.name for p in db.parent.iterdir() if p.name not in (f"{db.name}-wal", f"{db.name}-shm"))


def journal_mode(db: Path) -> str:
    with closing(sqlite3.connect(db)) as con:
        return con.execute("PRAGMA journal_mode").fetchone()[0]


def assert_complete(db: Path):
    """MLflow opens the store as it is (its schema checked against MLflow's) and nothing is left over."""
    assert [e.name for e in MlflowClient(uri_of(db)).search_experiments()] == ["Default"]
    assert not list(db.parent.glob(f"{db.name}.tmp-*"))


# --- which store ---------------------------------------------------------------------------------

def test_store_uri_is_the_given_uri_else_the_environment_else_where_mlflow_looks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.store_uri() == f"sqlite:///{tmp_path}/mlflow.db" and store.found_by_mlflow(store.store_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.store_uri() == "http://127.0.0.1:5000" and store.found_by_mlflow("http://127.0.0.1:5000")
    assert store.store_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"
    assert not store.found_by_mlflow("sqlite:///x/mlflow.db")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.system
def test_the_default_store_is_the_one_mlflow_uses_with_nothing_set(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    mlflow_uri = subprocess.run([sys.executable, "-c", "import mlflow; print(mlflow.get_tracking_uri())"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120).stdout.strip()
    assert mlflow_uri == store.store_uri()


def add_run(db: Path) -> None:
    client = MlflowClient(uri_of(db))
    client.create_run(client.create_experiment("e"))


def test_a_store_at_the_old_place_is_used_while_it_is_the_only_one_and_said_once(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old, new = tmp_path / "mlruns" / "mlflow.db", tmp_path / "mlflow.db"
    store.open_store(uri_of(old))
    add_run(old)
    assert store.store_uri() == store.store_uri() == uri_of(old)
    err = capfd.readouterr().err
    assert err.count("note: using the old store mlruns/mlflow.db (no ./mlflow.db here); `mv mlruns/mlflow.db* .` "
                     "puts it where MLflow looks\n") == 1 and len(err.splitlines()[0]) < 120
    store.open_store(uri_of(new))  # what `mlflow ui` leaves here: a store without a run
    assert store.store_uri() == uri_of(old)
    add_run(new)
    assert store.store_uri() == uri_of(new)
    new.unlink()
    new.touch()  # an empty file: nothing stored
    assert store.store_uri() == uri_of(old)


def test_an_old_place_that_holds_no_run_is_not_used(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store.open_store(uri_of(tmp_path / "mlruns" / "mlflow.db"))
    assert store.store_uri() == uri_of(tmp_path / "mlflow.db") and "note" not in capfd.readouterr().err


def test_artifacts_go_to_mlruns_beside_the_store_as_mlflow_puts_them(tmp_path):
    from sweep import tracking

    db = tmp_path / "mlflow.db"
    uri = store.open_store(uri_of(db))
    experiment = MlflowClient(uri).get_experiment(tracking.ensure_experiment(uri, "my exp"))
    assert experiment.artifact_location == (tmp_path / "mlruns" / "my_exp").as_uri()
    assert MlflowClient(uri).get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    old = tmp_path / "old" / "mlruns" / "mlflow.db"  # the old layout keeps its artifacts/ folder
    assert store.artifact_root(old) == tmp_path / "old" / "mlruns" / "artifacts"


@pytest.mark.parametrize("uri, words", [
    ("mlruns", ["is a path", "sqlite:///"]),                     # a folder store, as MLflow 2 wrote them
    ("file:///tmp/mlruns", ["is a path", "sqlite:////tmp/mlruns/mlflow.db"]),
    ("/tmp/somewhere/mlflow.db", ["is a path", "sqlite:////tmp/somewhere/mlflow.db"]),
    ("localhost:5000", ["no scheme", "http://localhost:5000"]),
    ("127.0.0.1:5000", ["no scheme", "http://127.0.0.1:5000"]),
    ("sqlite://", ["sqlite:///PATH/mlflow.db"]),                  # in memory: keeps nothing
    ("sqlite:///:memory:", ["sqlite:///PATH/mlflow.db"]),
])
def test_a_uri_that_names_no_usable_store_is_one_line(uri, words):
    with pytest.raises(StoreError) as caught:
        store.store_uri(uri)
    assert_one_line(caught.value, repr(uri), *words)


@pytest.mark.parametrize("uri", ["http://host:5000", "https://host/mlflow", "databricks",
                                 "postgresql+psycopg2://user@db/mlflow", "sqlite:///relative/mlflow.db"])
def test_server_and_database_uris_pass_as_they_are(uri):
    assert store.store_uri(uri) == uri


# --- whether it is there ---------------------------------------------------------------------------

def test_store_exists_reads_without_creating(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    assert not store.store_exists(uri_of(db))
    assert not (tmp_path / "mlruns").exists()
    db.parent.mkdir()
    db.touch()
    assert not store.store_exists(uri_of(db))  # an empty file holds nothing
    with pytest.raises(StoreError) as caught:
        store.existing_store(uri_of(db), "run `sweep run` first")
    assert_one_line(caught.value, "no tracking store at", "run `sweep run` first")


def half_built(db: Path) -> None:
    """What an interrupted MLflow migration leaves: some tables, and alembic's scratch table."""
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER)")
        con.execute("CREATE TABLE _alembic_tmp_metrics (key TEXT)")


@pytest.mark.parametrize("make, words", [
    (lambda db: db.mkdir(parents=True), ["is a folder", "mlflow.db/mlflow.db"]),
    (lambda db: db.write_bytes(b"not a database" * 50), ["is not an SQLite database"]),
    (half_built, ["unfinished schema migration", "_alembic_tmp_metrics", "delete"]),
])
def test_something_there_that_is_no_store_is_one_line(tmp_path, make, words):
    db = tmp_path / "mlflow.db"
    if make is not half_built:
        make(db)
    else:
        half_built(db)
    before = db.read_bytes() if db.is_file() else None
    for use in (store.store_exists, store.open_store):
        with pytest.raises(StoreError) as caught:
            use(uri_of(db))
        assert_one_line(caught.value, str(db), *words)
    assert (db.read_bytes() if db.is_file() else None) == before  # left untouched


# --- making it safely ------------------------------------------------------------------------------

def test_open_store_creates_a_complete_store_and_its_folders(tmp_path, capfd):
    db = tmp_path / "a" / "b" / "mlflow.db"
    assert store.open_store(uri_of(db)) == uri_of(db)
    assert_complete(db)
    assert "Creating initial MLflow database tables" not in capfd.readouterr().err
    assert beside(db) == ["mlflow.db"]  # no lock file left beside it
    before = db.stat().st_mtime_ns
    assert store.open_store(uri_of(db)) == uri_of(db)  # an existing store is opened as it is
    assert db.stat().st_mtime_ns == before


def test_open_store_replaces_an_empty_file_and_clears_leftovers_of_a_killed_creation(tmp_path):
    db = tmp_path / "mlflow.db"
    db.touch()
    leftovers = [tmp_path / "mlflow.db.tmp-99999", tmp_path / "mlflow.db.tmp-99999-journal"]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
    store.open_store(uri_of(db))
    assert_complete(db)
    assert not any(p.exists() for p in leftovers)


def schema_of(db: Path) -> list:
    """Its tables, indexes and their columns and constraints (MLflow's migrations order a table's
    constraints differently from one build to the next)."""
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master")
        return sorted((kind, name, sorted(line.strip(" ,") for line in (sql or "").splitlines()))
                      for kind, name, sql in rows)


def test_a_new_store_is_a_copy_of_an_empty_one_kept_per_mlflow_version(tmp_path, monkeypatch):
    """The first store this user makes is built by MLflow and kept as a template in their cache;
    later ones are copies of it, each with its Default experiment's artifacts beside it: the same
    store MLflow builds, in a fraction of the time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "first" / "mlflow.db", tmp_path / "second" / "mlflow.db"
    store.open_store(uri_of(first))
    template, = (tmp_path / "cache" / "mnist-sweep").glob("empty-store-mlflow-*.db")
    assert version("mlflow") in template.name
    template_bytes = template.read_bytes()
    start = time.perf_counter()
    store.open_store(uri_of(second))
    copied = time.perf_counter() - start
    assert template.read_bytes() == template_bytes  # the template itself is never written to
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "FILE"))  # no cache to keep a template in: built here
    (tmp_path / "FILE").write_text("not a folder")
    built = tmp_path / "built" / "mlflow.db"
    start = time.perf_counter()
    store.open_store(uri_of(built))
    assert copied < time.perf_counter() - start
    assert schema_of(first) == schema_of(second) == schema_of(built)
    for db in (first, second, built):
        assert_complete(db)
        assert MlflowClient(uri_of(db)).get_experiment("0").artifact_location == str(db.parent / "mlruns" / "0")
        assert beside(db) == ["mlflow.db"] and journal_mode(db) == "wal"
    assert not (tmp_path / "FILE").is_dir()


def test_a_template_that_is_not_an_empty_store_is_never_copied_and_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store.open_store(uri_of(tmp_path / "first" / "mlflow.db"))
    template, = (tmp_path / "cache" / "mnist-sweep").glob("*.db")
    good = template.read_bytes()
    client = MlflowClient(uri_of(template))
    client.create_run(client.create_experiment("used"))  # someone used it as a store
    for n, damaged in enumerate([template.read_bytes(), good[:5000], b"not SQLite at all"]):
        template.write_bytes(damaged)
        db = tmp_path / f"s{n}" / "mlflow.db"
        store.open_store(uri_of(db))
        assert_complete(db)  # built by MLflow: only the Default experiment
        assert not template.exists()  # removed, to be made again by the next store
    store.open_store(uri_of(tmp_path / "again" / "mlflow.db"))
    assert_complete(tmp_path / "again" / "mlflow.db")
    assert schema_of(template) == schema_of(tmp_path / "first" / "mlflow.db")


def create_when(uri: str, go: Path) -> None:
    while not go.exists():
        time.sleep(0.002)
    store.open_store(uri)


def start_creating(db: Path, go: Path):
    """A process that creates the store once `go` exists: forked, so MLflow is loaded already and
    the creations race each other from the same moment."""
    proc = multiprocessing.get_context("fork").Process(target=create_when, args=(uri_of(db), go))
    proc.start()
    return proc


@pytest.mark.system
def test_commands_creating_one_store_at_once_all_succeed(tmp_path):
    """Two processes on one store and four on another, all at once."""
    go = tmp_path / "go"
    dbs = {n: tmp_path / f"by{n}" / "mlflow.db" for n in (2, 4)}
    procs = [start_creating(db, go) for n, db in dbs.items() for _ in range(n)]
    go.touch()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    for db in dbs.values():
        assert_complete(db)


@pytest.mark.system
@pytest.mark.parametrize("template", ["none", "to make"])
def test_creation_interrupted_at_any_moment_leaves_no_store_or_a_complete_one(tmp_path, monkeypatch, template):
    """SIGINT (Ctrl-C) and SIGKILL at moments spread over the creation (measured from the moment its
    temporary file appears), all at once; then every folder holds nothing or a complete store, and
    the next open_store makes or opens a complete one. Without a template (no cache folder) the store
    is built in place; with one to make, the processes make the template (cut short too) first."""
    cache = tmp_path / "cache"
    if template == "none":
        cache.write_text("a file: no cache folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    moments = [(signal.SIGINT, 0.0), (signal.SIGINT, 0.2), (signal.SIGINT, 0.6), (signal.SIGINT, 3.0),
               (signal.SIGKILL, 0.1), (signal.SIGKILL, 0.4), (signal.SIGKILL, 1.2)]
    go = tmp_path / "go"
    dbs = [tmp_path / f"{sig.name}-{delay}" / "mlflow.db" for sig, delay in moments]
    procs = [start_creating(db, go) for db in dbs]
    go.touch()
    started, signalled = {}, set()
    deadline = time.time() + 60
    while len(signalled) < len(procs) and time.time() < deadline:
        for i, (db, (sig, delay)) in enumerate(zip(dbs, moments)):
            making = list(db.parent.glob("mlflow.db.tmp-*")) or list(cache.glob("mnist-sweep/*.tmp-*"))
            if i not in started and (db.exists() or making):
                started[i] = time.time()
            if i in started and i not in signalled and time.time() >= started[i] + delay:
                if procs[i].exitcode is None:
                    os.kill(procs[i].pid, sig)
                signalled.add(i)
        time.sleep(0.002)
    outcomes = []
    for (sig, delay), proc, db in zip(moments, procs, dbs):
        proc.join(60)
        outcomes.append((sig.name, delay, proc.exitcode, "complete" if db.exists() else "none"))
        if db.exists():
            store.store_exists(uri_of(db))  # raises if it is anything but a store
            assert_complete(db)
    assert len(signalled) == len(procs), outcomes
    assert any(state == "none" for *_, state in outcomes), outcomes  # some were cut half way
    again = [start_creating(db, go) for db in dbs]  # all at once, as above
    for proc in again:
        proc.join(120)
    assert [p.exitcode for p in again] == [0] * len(dbs)
    for db in dbs:
        assert_complete(db)
    if template == "to make":
        assert_complete(next(cache.glob("mnist-sweep/*.db")))


# --- stores that cannot be used: one line, at once ---------------------------------------------------

def test_a_file_where_the_store_folder_should_be(tmp_path):
    blocker = tmp_path / "FILE"
    blocker.write_text("a file")
    for db in (blocker / "mlflow.db", blocker / "deeper" / "mlflow.db"):
        with pytest.raises(StoreError) as caught:
            store.open_store(uri_of(db))
        assert_one_line(caught.value, f"{blocker} is a file, not a folder")


def test_a_read_only_folder_is_refused_at_once(tmp_path, immutable):
    folder = tmp_path / "ro"
    folder.mkdir()
    immutable(folder)
    for db in (folder / "mlflow.db", folder / "sub" / "mlflow.db"):
        start = time.time()
        with pytest.raises(StoreError) as caught:
            store.open_store(uri_of(db))
        assert time.time() - start < 10
        assert_one_line(caught.value, str(folder), "Operation not permitted")


@pytest.mark.parametrize("frozen", ["file", "folder"])
def test_a_store_that_cannot_be_written_is_refused_at_once_and_still_read(tmp_path, immutable, frozen):
    db = tmp_path / "s" / "mlflow.db"
    store.open_store(uri_of(db))
    immutable(db if frozen == "file" else db.parent)
    start = time.time()
    with pytest.raises(StoreError) as caught:
        store.open_store(uri_of(db))
    assert time.time() - start < 10
    assert_one_line(caught.value, "cannot be written", str(db), "--tracking-uri")
    assert store.existing_store(uri_of(db), "") == uri_of(db)  # reading it is fine


def test_status_and_best_read_a_store_they_cannot_write(tmp_path, immutable):
    from click.testing import CliRunner

    from sweep.cli import main
    from sweep.spec import expand

    from conftest import log_run, new_store

    spec, uri, experiment_id, parent = new_store(tmp_path, "experiment: ro\ndefaults: {epochs: 1}\nseeds: [1, 2]\n"
                                                           "grids:\n  g: {lr: [0.1, 0.2]}\n")
    for run in expand(spec)[:3]:
        log_run(uri, experiment_id, parent, run, spec.name, 0.1)
    folder = tmp_path
    before = sorted(p.name for p in folder.iterdir())
    immutable(folder / "mlflow.db")
    immutable(folder)                      # no file can be made beside the store: its mirror goes in memory
    status = CliRunner().invoke(main, ["status", str(tmp_path / "s.yaml"), "--tracking-uri", uri])
    assert status.exit_code == 0 and "4 runs: 1 pending, 0 running, 0 failed, 3 done" in status.output, status.output
    best = CliRunner().invoke(main, ["best", str(tmp_path / "s.yaml"), "--by", "lr", "--tracking-uri", uri])
    assert best.exit_code == 0 and "Traceback" not in best.output, best.output
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.system
def test_the_store_file_alone_is_the_whole_store_and_is_read_where_nothing_can_be_written(tmp_path, immutable):
    """A store is written in SQLite's write-ahead-log mode; what a command wrote is moved into the
    file when it ends (checkpoint), so a copy of the file alone holds every run, and another
    process reads it in a folder where SQLite cannot keep the log's index beside it."""
    from sweep.spec import expand

    from conftest import log_run, new_store

    (tmp_path / "w").mkdir()
    spec, uri, experiment_id, parent = new_store(tmp_path / "w", "experiment: wal\ndefaults: {epochs: 1}\n"
                                                                 "seeds: [1, 2]\ngrids:\n  g: {lr: [0.1, 0.2]}\n")
    for run in expand(spec)[:3]:
        log_run(uri, experiment_id, parent, run, spec.name, 0.1)
    db = tmp_path / "w" / "mlflow.db"
    assert journal_mode(db) == "wal"
    store.checkpoint(db)                     # as a command that wrote does when it ends
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("mlflow.db", "s.yaml"):
        shutil.copy(tmp_path / "w" / name, copy / name)
    immutable(copy)
    for command in (["status", "s.yaml"], ["best", "s.yaml", "--by", "lr"]):
        done = subprocess.run([sys.executable, "-m", "sweep.cli", *command], cwd=copy, capture_output=True,
                              text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""}, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "3 done" in done.stdout if command[0] == "status" else "0.1" in done.stdout, done.stdout
    assert sorted(p.name for p in copy.iterdir()) == ["mlflow.db", "s.yaml"]


@pytest.mark.system
def test_a_store_that_cannot_be_opened_in_a_folder_that_can_be_written_is_an_error_not_a_stale_read(tmp_path):
    """Out of file descriptors, SQLite cannot open a store's log: the read fails as it is, never
    falling back to reading the file alone (what a folder this process may not write gets)."""
    db = tmp_path / "mlflow.db"
    store.open_store(uri_of(db))
    assert journal_mode(db) == "wal" and not Path(f"{db}-shm").exists()
    script = f"""
import os, resource, sqlite3
from pathlib import Path
from sweep.tracking.location import reading
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    os.close(held.pop())  # one descriptor left: the store's file, not its log
try:
    reading(Path({str(db)!r})).execute("select count(*) from runs").fetchone()
    print("read")
except sqlite3.OperationalError as exc:
    print("refused:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("refused: unable to open"), done.stdout + done.stderr


def test_an_artifact_lands_where_mlflow_puts_it_whichever_process_created_the_run(tmp_path):
    """A run this process created: its artifact is copied straight to its folder (no read of the run
    first); any other run: through MLflow's client. MLflow finds both."""
    from sweep import tracking

    uri = store.open_store(uri_of(tmp_path / "mlflow.db"))
    experiment = tracking.ensure_experiment(uri, "art")
    ours = tracking.create_run(uri, experiment, "ours", {})
    theirs = MlflowClient(uri).create_run(experiment).info.run_id  # as another process would
    agent = tmp_path / "mnist_agent.pt"
    agent.write_bytes(b"weights")
    for run_id in (ours, theirs, ours):  # the second time, ours is no longer remembered: MLflow's client
        tracking.log_artifact(uri, run_id, agent)
        listed = MlflowClient(uri).list_artifacts(run_id)
        assert [a.path for a in listed] == ["mnist_agent.pt"]
        (tmp_path / run_id).mkdir(exist_ok=True)
        fetched = MlflowClient(uri).download_artifacts(run_id, "mnist_agent.pt", str(tmp_path / run_id))
        assert Path(fetched).read_bytes() == b"weights"
    assert (tmp_path / "mlruns" / "art" / ours / "artifacts" / "mnist_agent.pt").exists()
