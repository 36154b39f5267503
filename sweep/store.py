"""Which tracking store, whether it exists, and making a local one (placeholder; see store-c)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import SweepError

DEFAULT_STORE_DIR = "mlruns"


class StoreError(SweepError):
    """The tracking store cannot be found, created or reached."""


def default_tracking_uri(base: str | os.PathLike = ".") -> str:
    return f"sqlite:///{(Path(base).resolve() / DEFAULT_STORE_DIR / 'mlflow.db').as_posix()}"


def store_uri(uri: Optional[str] = None) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI, else SQLite under ./mlruns; creates nothing."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def existing_store(uri: Optional[str], hint: str) -> str:
    """The store to read from; a local store that does not exist yet is an error saying what to do."""
    uri = store_uri(uri)
    if not store_exists(uri):
        raise StoreError(f"no tracking store at {uri}; {hint}")
    return uri


def open_store(uri: Optional[str] = None) -> str:
    """The store to write to, its local folder made."""
    uri = store_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri:
        raise StoreError(f"tracking URI {uri!r} is not supported: MLflow 3 refuses a plain folder store; "
                         f"use sqlite:///PATH/mlflow.db or an http(s):// tracking server")
    return uri
