"""The tracking store: which one, whether it is there, and making a local one safely.

The default store is where MLflow 3 itself looks when nothing is set: `./mlflow.db`, with the
artifacts under `./mlruns/`, so that `mlflow ui`, `mlflow models predict` and `mlflow.search_runs`
find the sweep's runs from its folder. A store at the old place, `./mlruns/mlflow.db`, is used
while it is the only one there (and a line on stderr says so).

A local store is one SQLite file, `sqlite:///PATH/mlflow.db`. MLflow creates its tables in many
migration steps, so a file that MLflow starts filling in place is broken for good if the command
is interrupted half way or a second command migrates it at the same time. `open_store` therefore
builds a new store under a lock, in a temporary file beside PATH, and moves it into place in one
step: PATH holds either no store or a complete one, and a second command waits for the first.
Those steps take a second or more, so the first store a user makes is kept, empty, in their cache
folder (`$XDG_CACHE_HOME/mnist-sweep`, else `~/.cache/mnist-sweep`; one per MLflow version) and
every later store starts as a copy of it: the same tables, its Default experiment's artifacts
moved beside the new store. Without a cache folder to write, each store is built as before.

A store opened to be written is put in SQLite's write-ahead-log mode, and a process that wrote moves
the log into the file when it ends (docs/queue.md says why and what it changes).

Only stdlib at import: `sweep plan` uses this module before anything heavy is loaded.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import importlib.metadata
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit
from urllib.request import pathname2url

from ..errors import SweepError

DB_NAME = "mlflow.db"          # MLflow 3's default store, sqlite:///mlflow.db in the current folder
ARTIFACTS_DIR = "mlruns"       # and its default artifact root, ./mlruns
LEGACY_STORE = Path("mlruns", DB_NAME)  # where sweeps kept the store before
PROBE_SECONDS = 5            # a tracking server answers /health at once; silence is an error
SQLITE = "sqlite:///"
SERVER_SCHEMES = ("http", "https")


class StoreError(SweepError):
    """The tracking store cannot be found, created, reached or written; the message says what to do."""


_told: set = set()  # the old stores this process has said it uses


def default_store_uri(base: str | os.PathLike = ".") -> str:
    """`BASE/mlflow.db`, where MLflow looks by default; the old `BASE/mlruns/mlflow.db` while there is
    no store at the new place, or one that holds no run (say, one that `mlflow ui` created)."""
    base = Path(base).resolve()
    new, old = base / DB_NAME, base / LEGACY_STORE
    if old.is_file() and (not new.exists() or _holds_no_run(new)) and not _holds_no_run(old):
        if old not in _told:
            _told.add(old)
            why = "no ./mlflow.db here" if not new.exists() else "./mlflow.db holds no run"
            print(f"note: using the old store {LEGACY_STORE} ({why}); `mv {LEGACY_STORE}* .` puts it where "
                  f"MLflow looks", file=sys.stderr)
        return f"{SQLITE}{old.as_posix()}"
    return f"{SQLITE}{new.as_posix()}"


def found_by_mlflow(uri: str) -> bool:
    """Whether MLflow's own commands (`mlflow ui`, `mlflow models predict`, ...) run from this folder
    with nothing more set use this store: it is $MLFLOW_TRACKING_URI, or ./mlflow.db when that is unset."""
    here = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{(Path.cwd() / DB_NAME).resolve().as_posix()}"
    return uri == here


def _holds_no_run(path: Path) -> bool:
    """An SQLite store without a single run (an empty file included); False for anything else."""
    try:
        if path.stat().st_size == 0:
            return True
        with contextlib.closing(_connect(path, "ro")) as con:
            return con.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is None
    except (OSError, sqlite3.Error):
        return False  # not a store, or not readable: the checks that follow say what is wrong


def artifact_root(path: Path) -> Path:
    """Where a local store at `path` keeps its experiments' artifacts: `mlruns/` beside it, as
    MLflow does (in the old layout, where the store is itself in mlruns/, its `artifacts/`)."""
    folder = path.resolve().parent
    return folder / "artifacts" if folder.name == ARTIFACTS_DIR else folder / ARTIFACTS_DIR


def store_uri(uri: Optional[str] = None) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI, else ./mlflow.db (see default_store_uri); checked,
    creates nothing."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri()
    scheme = urlsplit(uri).scheme
    if uri == "databricks" or "://" in uri and scheme not in ("file", "sqlite"):
        return uri  # a server, a database or a plugin's store: MLflow reports its own errors
    if scheme == "sqlite":
        if not uri.startswith(SQLITE) or local_path(uri) in (Path(), Path(":memory:")):
            raise StoreError(f"tracking URI {uri!r}: a local store is a file, sqlite:///PATH/{DB_NAME} "
                             f"(four slashes before an absolute PATH)")
        return uri
    if "://" not in uri and re.fullmatch(r"[\w.-]+:\d+", uri):
        raise StoreError(f"tracking URI {uri!r} has no scheme; for a tracking server use http://{uri}")
    path = Path(urlsplit(uri).path if scheme == "file" else uri).resolve()
    database = path if path.suffix == ".db" else path / DB_NAME
    raise StoreError(f"tracking URI {uri!r} is a path, not a store (MLflow 3 no longer writes folder "
                     f"stores); use sqlite:///{database.as_posix()} or a tracking server, http://HOST:PORT")


def local_path(uri: str) -> Optional[Path]:
    """The SQLite file of a local store; None for a server or a database server."""
    return Path(uri[len(SQLITE):].split("?")[0]) if uri.startswith(SQLITE) else None


def is_local(uri: str) -> bool:
    """A file on this machine: workers elsewhere cannot write it."""
    return local_path(uri) is not None


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in (*SERVER_SCHEMES, "databricks") or uri == "databricks"


def store_exists(uri: str) -> bool:
    """Whether there is a store to read: False for a local store never created; a server is probed.

    Raises StoreError when something is there that no command can use (a folder, a file that is
    not SQLite, a store left half-built by an interrupted migration, a server that does not answer).
    """
    path = local_path(uri)
    if path is None:
        if urlsplit(uri).scheme in SERVER_SCHEMES:
            _probe_server(uri)
        return True
    if not path.exists():
        return False
    return _check_file(uri, path)


def existing_store(uri: Optional[str], hint: str) -> str:
    """The store to read from; a local store that does not exist yet is an error saying what to do."""
    uri = store_uri(uri)
    if not store_exists(uri):
        raise StoreError(f"no tracking store at {uri}; {hint}")
    return uri


def open_store(uri: Optional[str] = None) -> str:
    """The store to write to: a local one is created safely when absent and must be writable; a
    server must answer. Call it after connecting to a cluster and before the first write."""
    uri = store_uri(uri)
    path = local_path(uri)
    if path is None:
        store_exists(uri)  # probes a server
        return uri
    if not store_exists(uri):
        _create(uri, path)
    _check_writable(uri, path)
    _log_ahead(path)
    return uri


def _check_file(uri: str, path: Path) -> bool:
    """True for an SQLite file MLflow can open, False for an empty file (nothing was stored)."""
    if path.is_dir():
        raise StoreError(f"tracking store {uri}: {path} is a folder, not an SQLite file; "
                         f"use sqlite:///{(path / DB_NAME).as_posix()}")
    # Through SQLite, never by opening the file: closing another descriptor of it would drop the locks
    # that this process's SQLite connections hold on it (POSIX), and another process could then take
    # the store's write-ahead log away from under them.
    try:
        if path.stat().st_size == 0:
            return False
        with contextlib.closing(_connect(path, "ro")) as con:
            unfinished = [name for (name,) in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'")]
    except OSError as exc:
        raise StoreError(f"tracking store {uri} cannot be read: {exc.strerror}") from None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"tracking store {uri}: {path} is not an SQLite database; "
                             f"move it away or point --tracking-uri at an MLflow store") from None
        raise StoreError(f"tracking store {uri} cannot be read: {exc}") from None
    if unfinished:
        raise StoreError(f"tracking store {uri} holds an unfinished schema migration (table {unfinished[0]}): "
                         f"its creation or upgrade was interrupted. If it holds no runs you need, delete "
                         f"{path}; else restore it from a backup")
    return True


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    """Open an existing SQLite file without ever creating one (mode ro or rw; ro: see reading)."""
    if mode == "ro":
        return reading(path, timeout=10, isolation_level=None)
    return sqlite3.connect(f"file:{pathname2url(str(path.absolute()))}?mode={mode}", uri=True,
                           timeout=10, isolation_level=None)


def reading(path: Path, mode: str = "ro", **options) -> sqlite3.Connection:
    """A connection that reads the existing store at `path` (mode ro, or rw to let a reader roll back
    the journal a crashed writer left): `sqlite3.connect`'s `options`, checked by a first read.

    SQLite reads a store in write-ahead-log mode through an index of the log that it keeps beside it
    (PATH-shm) and cannot make in a folder this process may not write. Such a store, with no index
    and its log empty (no process has it open: the last one to close it removes both), is read as an
    unchanging file (SQLite's `immutable`): every commit is in the file. Anything else that cannot
    be opened is the error it is."""
    address = f"file:{pathname2url(str(path.absolute()))}"
    con = sqlite3.connect(f"{address}?mode={mode}", uri=True, **options)
    try:
        con.execute("PRAGMA schema_version")  # opens the file and, in write-ahead-log mode, its log
        return con
    except sqlite3.OperationalError as exc:
        con.close()
        log, index = Path(f"{path}-wal"), Path(f"{path}-shm")
        if (not str(exc).startswith("unable to open") or index.exists() or log.exists() and log.stat().st_size
                or _writable(path.parent)):
            raise
    return sqlite3.connect(f"{address}?mode=ro&immutable=1", uri=True, **options)


def _writable(folder: Path) -> bool:
    """Whether this process may make a file in `folder`: False only when the system says it may not."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError as exc:
        return exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS)


def _check_writable(uri: str, path: Path) -> None:
    """Write for real and roll back: the file and its folder (SQLite's journal) must be writable."""
    try:
        with contextlib.closing(_connect(path, "rw")) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE _sweep_write_check (x)")
            con.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # another command is writing to it right now: it is writable
        raise StoreError(f"tracking store {uri} cannot be written ({exc}): make {path} and its folder "
                         f"writable, or choose another store with --tracking-uri") from None


def _log_ahead(path: Path) -> None:
    """Put a local store in SQLite's write-ahead-log mode, which the file keeps: a commit appends to
    the log instead of copying pages to a rollback journal first, and reads and writes no longer
    wait for each other (docs/queue.md). Left as it is when another process holds the store right
    now (a later command tries again)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_connect(path, "rw")) as con:
        con.execute("PRAGMA busy_timeout = 1000")
        con.execute("PRAGMA journal_mode = WAL")


def checkpoint(path: Path) -> None:
    """Move what a local store's write-ahead log holds into its file, so that once commands are done
    the file alone is the whole store (a copy of it, say). Skipped when another process keeps the
    store busy for more than a moment; SQLite does it later by itself."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_connect(path, "rw")) as con:
        con.execute("PRAGMA busy_timeout = 1000")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _create(uri: str, path: Path, from_template: bool = True) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in (folder, *folder.parents) if p.exists() and not p.is_dir())
        raise StoreError(f"cannot create tracking store {uri}: {blocker} is a file, not a folder") from None
    except OSError as exc:
        raise StoreError(f"cannot create tracking store {uri}: cannot make folder {folder}: {exc.strerror}") from None
    lock = folder / f"{path.name}.lock"
    with _locked(uri, lock):
        if path.exists() and _check_file(uri, path):
            return  # another command created it while we waited
        for leftover in glob.glob(f"{glob.escape(str(path))}.tmp-*"):  # of a creation that was killed
            os.unlink(leftover)
        temporary = folder / f"{path.name}.tmp-{os.getpid()}"
        try:
            if not (from_template and _copy_template(temporary, artifact_root(path))):
                _build(uri, temporary, artifact_root(path))
            os.replace(temporary, path)
        finally:
            for leftover in (temporary, Path(f"{temporary}-journal")):
                leftover.unlink(missing_ok=True)
        # The store is in place, so whoever takes this lock (or a new one) next finds it and returns:
        # the lock file is not needed any more and leaves no litter beside ./mlflow.db.
        lock.unlink(missing_ok=True)
        _sync(folder)


def _template_path() -> Path:
    """Where this user keeps an empty store of this MLflow version (one per version: its schema)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mnist-sweep" / f"empty-store-mlflow-{importlib.metadata.version('mlflow')}.db"


def _copy_template(temporary: Path, artifacts: Path) -> bool:
    """A new store as a copy of an empty one made before (by MLflow, once per MLflow version and user),
    its Default experiment moved to `artifacts`: building one migrates the schema in about a hundred
    steps, a second or more. False, and nothing left at `temporary`, when there is no usable template
    (a damaged one is removed, to be made again next time)."""
    try:
        template = _template_path()
        if not template.exists():
            _create(f"{SQLITE}{template.as_posix()}", template, from_template=False)
        shutil.copyfile(template, temporary)
    except (OSError, StoreError, ImportError, RuntimeError):  # RuntimeError: no home folder
        temporary.unlink(missing_ok=True)
        return False  # no cache folder to keep it in: MLflow builds this store
    placeholder = str(artifact_root(template).absolute())
    try:
        with contextlib.closing(_connect(temporary, "rw")) as con:
            (count, location), = con.execute("SELECT count(*), max(artifact_location) FROM experiments")
            if count != 1 or not location.startswith(placeholder) or con.execute("SELECT 1 FROM runs").fetchone():
                raise ValueError("not an empty store")
            now = int(time.time() * 1000)
            con.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ?",
                        (str(artifacts.absolute()) + location[len(placeholder):], now, now))
    except (sqlite3.Error, ValueError, TypeError):
        for damaged in (template, temporary, Path(f"{temporary}-journal")):
            with contextlib.suppress(OSError):
                damaged.unlink()
        return False
    _sync(temporary)
    return True


@contextlib.contextmanager
def _locked(uri: str, lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the store; it lapses when its holder dies, however it dies."""
    from filelock import FileLock

    lock = FileLock(lock_path)
    try:
        lock.acquire()
    except OSError as exc:
        raise StoreError(f"cannot create tracking store {uri}: folder {lock_path.parent} is not writable "
                         f"({exc.strerror}); choose another store with --tracking-uri") from None
    try:
        yield
    finally:
        lock.release()


def _build(uri: str, temporary: Path, artifacts: Path) -> None:
    """Let MLflow create and migrate a complete store in `temporary`."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    migration_log = logging.getLogger("mlflow.store.db.utils")
    level = migration_log.level
    migration_log.setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    try:
        store = SqlAlchemyStore(f"{SQLITE}{temporary.absolute().as_posix()}", str(artifacts.absolute()))
        store.engine.dispose()  # no pooled connection keeps using the temporary name
    except Exception as exc:
        raise StoreError(f"cannot create tracking store {uri}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        migration_log.setLevel(level)
    _sync(temporary)


def _sync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk: the store survives a power cut too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _probe_server(uri: str) -> None:
    """Ask the server's /health once, briefly; MLflow itself would retry for minutes."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0,
                                timeout=PROBE_SECONDS, raise_on_status=False)
    except Exception as exc:
        raise StoreError(f"tracking server {uri} cannot be reached ({_reason(exc)}); start it, or "
                         f"check --tracking-uri / MLFLOW_TRACKING_URI") from None
    if response.status_code >= 500:
        raise StoreError(f"tracking server {uri} is not working: GET /health answered "
                         f"{response.status_code}; check the server's log")


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within {PROBE_SECONDS} s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text.splitlines()[0][:200]
