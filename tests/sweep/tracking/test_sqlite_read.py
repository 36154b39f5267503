"""The SQL reader of a local store answers every query as MLflow's own search does."""
import itertools
import math
import sqlite3

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from sweep import tracking
from sweep.queue.base import Query
from sweep.tracking.mlflow_store import MlflowStore, filter_string
from sweep.tracking.sqlite_read import reader


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two experiments of runs in every state: ties in start time, deleted and restored runs, NaN
    and infinite metrics, tag values with quotes, LIKE's wildcards and other cases."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    client = MlflowClient(uri)
    ours, other = client.create_experiment("ours"), client.create_experiment("other")
    made = []
    for i in range(24):
        experiment = other if i % 7 == 6 else ours
        tags = {"sweep.kind": "train" if i % 5 else "parent", "sweep.key": f"k{i % 6}",
                "sweep.grids": ["a,b", "b", "ab", "A", "a_b", "it's"][i % 6], "sweep.session": f"s{i % 3}"}
        run = client.create_run(experiment, start_time=1_000 + (i // 3) * 10, run_name=f"run-{i}", tags=tags)
        run_id = run.info.run_id
        client.log_batch(run_id, metrics=[Metric("test_error", [0.1 * i, math.nan, math.inf][i % 3], 0, 1),
                                          Metric("test_error", 0.5, 0, 0), Metric("lr", 0.03, 0, 1)],
                         params=[Param("lr", "0.03"), Param("width", str(i))], tags=[RunTag("note", f'say "{i}"')])
        status = ["RUNNING", "FINISHED", "FAILED", "KILLED"][i % 4]
        if status != "RUNNING":
            client.set_terminated(run_id, status, end_time=2_000 + i * 10)
        made.append(run_id)
    for i in (3, 8, 9, 15):
        client.delete_run(made[i])
    client.restore_run(made[9])
    return uri, ours, made


def normal(rows):
    """Rows comparable with ==: NaN written as a word."""
    return [(r.run_id, r.status, r.start_time, r.end_time, r.name, r.artifact_uri, r.tags, r.params,
             {k: "nan" if math.isnan(v) else v for k, v in r.metrics.items()}, r.deleted) for r in rows]


def queries(made):
    yield Query()
    for view, oldest, limit in itertools.product(("active", "deleted", "all"), (False, True), (None, 1, 5)):
        yield Query(view=view, oldest_first=oldest, limit=limit)
    yield Query(tags=(("sweep.kind", "train"),))
    yield Query(tags=(("sweep.kind", "parent"), ("sweep.session", "s0")), oldest_first=True, limit=1)
    yield Query(tags=(("sweep.key", "k2"),), view="all")
    yield Query(tags=(("sweep.grids", "it's"),))
    yield Query(tags=(("sweep.kind", "train"),), tags_like=(("sweep.grids", "a"),))
    yield Query(tags_like=(("sweep.grids", "a_b"),))
    yield Query(tags_like=(("sweep.grids", "'s"),))
    yield Query(status="RUNNING")
    yield Query(not_status="RUNNING", view="deleted")
    yield Query(status="FINISHED", tags=(("sweep.session", "s1"),))
    for after in (0, 2_050, 2_100, 10_000):
        yield Query(ended_after=after)
    yield Query(run_ids=tuple(made[::2]), view="all")
    yield Query(run_ids=tuple(made[1:9]))
    yield Query(run_ids=(), view="all")
    yield Query(run_ids=(made[0], "not-a-run"), view="all", oldest_first=True)


def test_every_query_reads_what_mlflows_search_reads(store):
    uri, experiment, made = store
    direct = reader(uri)
    assert direct is not None
    for query in queries(made):
        order = ["attributes.start_time ASC"] if query.oldest_first else None
        if query.run_ids == ():
            expected = []
        else:
            expected = tracking.search(uri, experiment, filter_string(query), query.view, query.limit, order)
        assert normal(direct.find(experiment, query)) == normal(expected), query
    assert normal(MlflowStore(uri).find(experiment, Query(status="FAILED"))) == \
        normal(tracking.search(uri, experiment, "attributes.status = 'FAILED'"))


def test_experiments_are_found_as_mlflow_finds_them(store):
    uri, experiment, _ = store
    client = MlflowClient(uri)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    for name in ("ours", "other", "gone", "missing", "Default"):
        assert reader(uri).find_experiment(name) == (True, tracking.find_experiment(uri, name)), name


def test_no_reader_for_what_is_not_a_local_store_of_mlflows_tables(tmp_path):
    assert reader("http://127.0.0.1:5000") is None
    assert reader("postgresql+psycopg://u@127.0.0.1/db") is None
    assert reader(f"sqlite:///{tmp_path}/absent.db") is None
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("create table runs (run_uuid text)")
    assert reader(f"sqlite:///{tmp_path}/other.db") is None
