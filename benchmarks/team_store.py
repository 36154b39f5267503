"""A claim through `mlflow server` on a large store: PostgreSQL against SQLite, without and with the
tag index that docs/scaling.md tells a server's administrator to create.

For each backend it starts a throwaway server as the tests do (tests/servers.py: a PostgreSQL
cluster of its own in a temporary folder, where PostgreSQL is installed; `mlflow server` on
127.0.0.1), writes one training run through the queue as a worker does (claim, params, 10 epochs of
metrics, finish with a small agent), copies it in SQL until the store holds --runs runs (each copy
with a key of its own, a session per 100), and times, in this process, through the server:

- a claim's lookup of a key's runs (queue.key_attempts), of a key that is not there;
- a whole claim of a new key (queue.claim: two lookups and the run's creation), then withdrawn;

each the median of --repeats, first without the index, then with it (created as the docs say); and
the database's own time for the heart of the lookup, `SELECT run_uuid FROM tags WHERE key = ? AND
value = ?`, run on it directly.

    python benchmarks/team_store.py --runs 50000
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sweep import queue, tracking  # noqa: E402
from sweep.queue import schema  # noqa: E402
from sweep.spec import expand, parse_spec  # noqa: E402
from sweep.tracking.mlflow_store import MlflowStore  # noqa: E402

from servers import mlflow_server, postgres_bindir, postgres_cluster  # noqa: E402  (the tests' throwaway servers)

SQLITE_INDEX = "CREATE INDEX sweep_tags_key_value ON tags (key, value)"  # docs/scaling.md, for SQLite
EPOCHS = 10


def postgres_index_command() -> list:
    """docs/scaling.md's psql line, as its words (the database URL second)."""
    lines = (ROOT / "docs" / "scaling.md").read_text().splitlines()
    return shlex.split(next(line for line in lines if line.strip().startswith("psql ")))


def sweep_of(repeats: int):
    rates = ", ".join(f"{0.001 * (i + 1):g}" for i in range(repeats + 1))
    return parse_spec(f"experiment: team-store\ngrids:\n  g: {{lr: [{rates}]}}\n", "team-store.yaml")


def first_run(url: str, spec, agent: Path):
    """The sweep's parent run and one finished training run, written as a worker writes them."""
    store = MlflowStore(url)
    experiment_id = store.ensure_experiment(spec.experiment)
    parent = queue.parent_run(store, experiment_id, spec.name, {})
    planned = expand(spec)
    lease = queue.claim(store, experiment_id, parent, planned[0], spec.name, "bench")
    lease.log_params({**planned[0].config.as_params(), "device": "cpu"})
    for epoch in range(1, EPOCHS + 1):
        lease.log_epoch({"train_loss": 0.3, "train_error": 0.05, "test_loss": 0.35, "test_error": 0.06,
                         "lr": planned[0].config.lr}, epoch)
    assert lease.finish({"final_test_error": 0.06, "epochs_completed": float(EPOCHS)}, EPOCHS, agent, False, False)
    return store, experiment_id, parent, planned, lease.run_id


def copies(run_id: str, columns: list, series: str) -> list:
    """SQL: the run and its tags copied, each copy a run of its own (its key and, per 100, its session)."""
    values = ", ".join("md5(run_uuid || n)" if c == "run_uuid" else c for c in columns)
    return [f"INSERT INTO runs ({', '.join(columns)}) SELECT {values} FROM runs, {series} WHERE run_uuid = '{run_id}'",
            f"INSERT INTO tags (key, value, run_uuid) SELECT key, CASE key WHEN '{schema.KEY}' THEN value || '-' || n "
            f"WHEN '{schema.SESSION}' THEN value || '-' || (n / 100) ELSE value END, md5(run_uuid || n) "
            f"FROM tags, {series} WHERE run_uuid = '{run_id}'"]


def timings(store, experiment_id, parent, planned, spec, repeats: int, db_lookup) -> dict:
    queue.key_attempts(store, experiment_id, "warm-up")  # the first request opens the connection
    lookups, claims, db = [], [], []
    for i in range(repeats):
        started = time.perf_counter()
        db_lookup(f"absent-{i}")
        db.append(time.perf_counter() - started)
    for i in range(repeats):
        started = time.perf_counter()
        queue.key_attempts(store, experiment_id, f"absent-{i}")
        lookups.append(time.perf_counter() - started)
    for run in planned[1:repeats + 1]:
        started = time.perf_counter()
        lease = queue.claim(store, experiment_id, parent, run, spec.name, "bench")
        claims.append(time.perf_counter() - started)
        tracking.delete_run(store.uri, lease.run_id)  # withdrawn: the next round claims the same key again
    return {"db": statistics.median(db), "lookup": statistics.median(lookups), "claim": statistics.median(claims)}


def on_postgres(runs: int, repeats: int, folder: Path, agent: Path) -> dict:
    import psycopg

    spec = sweep_of(repeats)
    with postgres_cluster() as cluster, mlflow_server(cluster.create_database("mlflow"), folder / "pg") as url:
        store, experiment_id, parent, planned, run_id = first_run(url, spec, agent)
        with psycopg.connect(cluster.url("mlflow"), autocommit=True) as db:
            columns = [c for (c,) in db.execute("SELECT column_name FROM information_schema.columns "
                                                "WHERE table_name = 'runs' ORDER BY ordinal_position")]
            for sql in copies(run_id, columns, f"generate_series(1, {runs - 1}) n"):
                db.execute(sql)
            db.execute("ANALYZE")

            def db_lookup(key):
                db.execute("SELECT run_uuid FROM tags WHERE key = %s AND value = %s", (schema.KEY, key),
                           prepare=False).fetchall()  # planned for its values, as the server's lookups are

            without = timings(store, experiment_id, parent, planned, spec, repeats, db_lookup)
            psql, _, *args = postgres_index_command()
            made = cluster.psql(cluster.url("mlflow"), *args)
            if made.returncode:
                raise SystemExit(f"the documented index: {made.stderr.strip()}")
            version = db.execute("SHOW server_version").fetchone()[0]
            return {"backend": f"PostgreSQL {version.split()[0]}", "without": without,
                    "with": timings(store, experiment_id, parent, planned, spec, repeats, db_lookup)}


def on_sqlite(runs: int, repeats: int, folder: Path, agent: Path) -> dict:
    spec = sweep_of(repeats)
    path = folder / "mlflow.db"
    with mlflow_server(f"sqlite:///{path}", folder / "sqlite") as url:
        store, experiment_id, parent, planned, run_id = first_run(url, spec, agent)
        db = sqlite3.connect(path, isolation_level=None, timeout=60)
        db.create_function("md5", 1, lambda text: hashlib.md5(text.encode()).hexdigest())
        columns = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
        series = (f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {runs - 1}) "
                  f"SELECT n FROM s)")
        for sql in copies(run_id, columns, series):
            db.execute(sql)
        db.execute("ANALYZE")

        def db_lookup(key):
            db.execute("SELECT run_uuid FROM tags WHERE key = ? AND value = ?", (schema.KEY, key)).fetchall()

        without = timings(store, experiment_id, parent, planned, spec, repeats, db_lookup)
        db.execute(SQLITE_INDEX)
        db.execute("ANALYZE")
        result = {"backend": f"SQLite {sqlite3.sqlite_version}", "without": without,
                  "with": timings(store, experiment_id, parent, planned, spec, repeats, db_lookup)}
        db.close()
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50000, help="runs in each store")
    parser.add_argument("--repeats", type=int, default=20, help="timings per figure (the median is printed)")
    args = parser.parse_args()
    if postgres_bindir() is None:
        raise SystemExit("PostgreSQL's server programs are not installed (README's test command installs them)")
    print(f"{args.runs:,} runs through `mlflow server` on 127.0.0.1; medians of {args.repeats}, ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    print(f"{'':16} {'without the index':^28} {'with the index':^28}")
    print(f"{'backend':16}" + f" {'database':>9} {'lookup':>8} {'claim':>8}" * 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        agent = folder / "mnist_agent.pt"
        agent.write_bytes(os.urandom(2048))
        for measure in (on_postgres, on_sqlite):
            (folder / measure.__name__).mkdir()
            r = measure(args.runs, args.repeats, folder / measure.__name__, agent)
            ms = {case: {k: 1000 * v for k, v in r[case].items()} for case in ("without", "with")}
            cells = "".join(f" {m['db']:9.2f} {m['lookup']:8.1f} {m['claim']:8.1f}" for m in ms.values())
            print(f"{r['backend']:16}{cells}", flush=True)


if __name__ == "__main__":
    main()
