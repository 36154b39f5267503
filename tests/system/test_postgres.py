"""A team's store for real: an MLflow tracking server on a PostgreSQL cluster of the tests' own
(servers.py; skipped where PostgreSQL is not installed), its database given the tag index by the
very command docs/scaling.md prints. Two sweeps claim the same runs at once with 4 workers between
them, one is killed and resumed: every key finishes once. And MLflow's lookups by tag use the index.
The database is one per test process; the index's test needs no server (a server starts slowly)."""
import json
import os
import shlex
import signal
import threading
from collections import Counter
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from sweep import queue
from sweep.queue import schema
from sweep.spec import expand, load_spec, parse_spec
from sweep.tracking.mlflow_store import MlflowStore

from conftest import (
    ROOT,
    SLEEPY,
    assert_each_key_finished_once,
    finish,
    log_run,
    store_runs,
    sweep_process,
    training_runs,
    wait_until,
    write_spec,
)
from servers import mlflow_server, postgres_cluster

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races

INDEX = "sweep_tags_key_value"
CLONES = 4000  # runs copied into the store in SQL, so that the planner weighs an index against a scan


def documented_index_command() -> list:
    """The psql command that docs/scaling.md gives for the index, as its words."""
    lines = (ROOT / "docs" / "scaling.md").read_text().splitlines()
    return shlex.split(next(line for line in lines if line.strip().startswith("psql ") and INDEX in line))


@pytest.fixture(scope="module")
def team_database(tmp_path_factory):
    """A PostgreSQL cluster and its database `mlflow`, with MLflow's tables (made here as `mlflow
    server` makes them on its first start) and the tag index created by the command the docs give."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("team-store")
    with postgres_cluster() as cluster:
        database = cluster.create_database("mlflow")
        SqlAlchemyStore(database, str(folder / "mlruns")).engine.dispose()
        psql, documented_database, *args = documented_index_command()
        assert psql == "psql" and documented_database.startswith("postgresql://")
        created = cluster.psql(cluster.url("mlflow"), *args)
        assert created.returncode == 0, created.stderr
        yield SimpleNamespace(cluster=cluster, uri=database, folder=folder)


@pytest.fixture(scope="module")
def team_server(team_database):
    """`mlflow server` on that database: the team's tracking server."""
    with mlflow_server(team_database.uri, team_database.folder / "artifacts") as url:
        yield url


@pytest.fixture
def on_team_server(team_server, tiny_dir, tmp_path, monkeypatch):
    """A working folder whose commands track to the team's server (their index cache in it too)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_DATA", str(tiny_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def process_group(pid: int):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_two_sweeps_on_the_server_one_killed_and_resumed_train_each_key_once(on_team_server):
    """Sweeps A and B, `--jobs 2` each, start together on one spec: 4 workers claim its runs through
    the server. A is SIGKILLed, workers and all, while both train, and started again at once: B and
    the resumed A race for what is left, the dead A's runs included (on a busy machine B, already
    running, may take it all): each key FINISHED once, nothing left RUNNING, no claim left behind."""
    spec = write_spec(on_team_server, "experiment: tiny\ndefaults: {epochs: 3, width: 16}\n"
                                      "grids:\n  g: {lr: [0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5]}\n")
    keys = {r.key for r in expand(load_spec(spec))}
    run = ("run", spec, "--jobs", 2, "--engine", "solo")
    a, b = (sweep_process(*run, faults=SLEEPY, started=False) for _ in range(2))

    def held_by(proc):
        return [r for r in store_runs() if r.info.status == "RUNNING"
                and process_group(int(r.data.tags[schema.HOLDER].split(":")[1])) == proc.pid]

    wait_until(lambda: held_by(a) and held_by(b), timeout=120, every=0.5)
    os.killpg(a.pid, signal.SIGKILL)
    finish(a)
    resumed = sweep_process(*run, faults=SLEEPY)
    outputs = [finish(proc, 300) for proc in (b, resumed)]
    assert [b.returncode, resumed.returncode] == [0, 0], outputs
    runs = training_runs()
    assert_each_key_finished_once(runs, keys)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all("is gone" in r.data.tags[schema.ERROR] for r in killed)  # A's, taken over
    assert len(runs) == len(keys) + len(killed)  # a claim that lost a race is withdrawn, not left behind


@contextmanager
def statements_run():
    """The SQL statements SQLAlchemy sends meanwhile, in this process, with their parameters."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sent = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def clone_run(connection, run_id: str, copies: int) -> None:
    """`copies` runs like `run_id`, each with a key of its own and a session per 100 of them."""
    columns = [c for (c,) in connection.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' ORDER BY ordinal_position")]
    values = ", ".join("md5(run_uuid || n)" if c == "run_uuid" else c for c in columns)
    connection.execute(f"INSERT INTO runs ({', '.join(columns)}) SELECT {values} FROM runs, "
                       f"generate_series(1, %s) n WHERE run_uuid = %s", (copies, run_id))
    connection.execute("INSERT INTO tags (key, value, run_uuid) SELECT key, CASE key "
                       "WHEN %s THEN value || '-' || n WHEN %s THEN value || '-' || n / 100 ELSE value END, "
                       "md5(run_uuid || n) FROM tags, generate_series(1, %s) n WHERE run_uuid = %s",
                       (schema.KEY, schema.SESSION, copies, run_id))
    connection.execute("ANALYZE runs")
    connection.execute("ANALYZE tags")


def plans(connection, statements, value: str) -> list:
    """EXPLAIN of each statement that looks a tag value up (the value among its parameters)."""
    found = [(sql, params) for sql, params in statements if "tags" in sql and value in dict(params).values()]
    assert found, statements
    return [json.dumps(connection.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()[0])
            for sql, params in found]


def test_mlflows_lookups_by_tag_use_the_documented_index(team_database, tmp_path, monkeypatch):
    """With 4,000 runs in the store, the SQL that MLflow runs for a claim's lookup by key, a round's by
    session and the sweep's parent run uses the index (PostgreSQL weighs it against a scan, so a store
    of a few runs would not show it); and a tag of MLflow's full length is still written. MLflow runs
    in this process here, on the database, as the server runs it for a client's search."""
    import psycopg

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root, ./mlruns
    spec = parse_spec("experiment: tag-index\ngrids:\n  g: {lr: [0.1]}\n", "tag-index.yaml")
    store = MlflowStore(team_database.uri)
    experiment_id = store.ensure_experiment(spec.experiment)
    parent = queue.parent_run(store, experiment_id, spec.name, {})
    (planned,) = expand(spec)
    run_id = log_run(team_database.uri, experiment_id, parent, planned, spec.name, 0.1)
    store.write(run_id, tags=schema.error(os.urandom(4000).hex()))  # incompressible, over a B-tree entry's limit
    with psycopg.connect(team_database.cluster.url("mlflow"), autocommit=True) as connection:
        clone_run(connection, run_id, CLONES)
        lookups = {"a claim's, by key": (lambda: queue.key_attempts(store, experiment_id, planned.key), planned.key),
                   "a round's, by session": (lambda: queue.session_attempts(store, experiment_id, "test-session-7"),
                                             "test-session-7"),
                   "the parent run's": (lambda: queue.find_parent(store, experiment_id, spec.name), schema.PARENT)}
        for what, (lookup, value) in lookups.items():
            with statements_run() as statements:
                lookup()
            assert all(INDEX in plan for plan in plans(connection, statements, value)), what
    assert Counter(a.status for a in queue.key_attempts(store, experiment_id, planned.key)) == {"FINISHED": 1}


def test_of_endings_committed_at_once_on_postgresql_exactly_one_stands(team_database, tmp_path, monkeypatch):
    """The fence under every run's ending (docs/queue.md) is MLflow's refusal to change a param, which
    PostgreSQL's primary key makes hold between concurrent transactions too: four threads commit four
    endings of one run at once, for 20 runs; each run keeps one, and every thread is told that one."""
    monkeypatch.chdir(tmp_path)
    store = MlflowStore(team_database.uri)
    experiment_id = store.ensure_experiment("endings")
    endings = ("FINISHED", "KILLED", "FAILED", "KILLED")
    for i in range(20):
        run_id = store.create_run(experiment_id, f"run{i}", {schema.KIND: schema.TRAIN})
        start, committed = threading.Barrier(len(endings)), [None] * len(endings)

        def commit(n):
            start.wait()
            committed[n] = queue.lease.commit_ending(store, experiment_id, run_id, endings[n])

        threads = [threading.Thread(target=commit, args=(n,)) for n in range(len(endings))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        [row] = store.find(experiment_id, queue.Query(run_ids=(run_id,)))
        assert set(committed) == {row.params[schema.ENDED]}, (i, committed)
