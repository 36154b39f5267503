"""How `sweep run` trains: every setting with its default and help, which the command's options are
made from (cli/run.py), and the check that refuses settings that cannot work."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from mnist_core.config import DEFAULT_CHUNK_SIZE

from ..errors import SettingsError
from ..queue import schema
from ..tracking.location import is_local

ENGINES = ("auto", "solo", "fused")
BACKENDS = ("loky", "dask", "ray")
MIN_LEASE = 6.0  # seconds: a holder beats every lease / 6, and gives the lease up a beat before it ends


def _setting(default, help_text: str, **option):
    """A setting: its default, its help, and how its option reads (`option`: the flag when not
    --NAME, `short`, `choices`, `min`, `metavar`, `envvar`, `folder`: a path to a folder)."""
    return field(default=default, metadata={"help": help_text, **option})


@dataclass(frozen=True)
class Settings:
    jobs: Optional[int] = _setting(None, "Parallel workers. [default: the GPU count when there are several, else "
                                         "the CPU cores]", short="-j", min=1)
    retries: int = _setting(1, "Extra attempts for a run that fails.", min=0)
    data_dir: Optional[str] = _setting(None, "Folder with MNIST. [default: $MNIST_DATA, else ./data]",
                                       envvar="MNIST_DATA", folder=True)
    device: str = _setting("auto", "auto (one GPU per worker when several, CUDA when one), cpu, cuda or cuda:N.")
    backend: str = _setting("loky", "joblib backend: loky (this machine), dask or ray (a cluster; needs a "
                                    "tracking server).", choices=BACKENDS)
    address: Optional[str] = _setting(None, "Scheduler of an existing cluster: tcp://HOST:8786 for dask, HOST:6379 "
                                            "or ray://HOST:10001 for ray. [default: start a local one]",
                                      metavar="ADDRESS")
    engine: str = _setting("auto", "auto: runs of one shape (activation, depth, width, batch size, epochs) train "
                                   "together as one batched model when there are two or more; solo: each run alone; "
                                   "fused: every run through the batched engine, even alone.", choices=ENGINES)
    chunk_size: int = _setting(DEFAULT_CHUNK_SIZE, "Most networks in one fused model; larger groups are split.",
                               min=1)
    wait: bool = _setting(True, "When another live process holds runs of this sweep: wait for it, then train what "
                                "it leaves (--wait), or exit with status 3 saying the sweep is not complete "
                                "(--no-wait).", option="--wait/--no-wait")
    lease_seconds: float = _setting(schema.DEFAULT_LEASE_SECONDS, "How long a claimed run outlives its holder's "
                                    "last heartbeat before another process may take it over.", option="--lease",
                                    metavar="SECONDS", min=MIN_LEASE)


SETTINGS = {f.name: f for f in fields(Settings)}


def check_settings(settings: Settings, store: str) -> None:
    """Refuse settings that cannot work with the store at `store`, before anything is written."""
    for name, f in SETTINGS.items():
        value = getattr(settings, name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise SettingsError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        least = f.metadata.get("min")
        if least is not None and value is not None and value < least:
            if name == "lease_seconds":
                raise SettingsError(f"lease of {value:g} s is too short: give at least {least:g} s")
            raise SettingsError(f"{name} of {value} is too small: give at least {least}")
    if settings.backend != "loky" and is_local(store):
        raise SettingsError(
            f"the {settings.backend} backend runs workers that cannot write the local store {store}. "
            f"Start a tracking server that they can reach, e.g.\n"
            f"  mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db "
            f"--artifacts-destination ./mlruns\n"
            f"(--host: an address the workers reach; a PostgreSQL URI for a team), then pass "
            f"--tracking-uri http://HOST:5000 or set MLFLOW_TRACKING_URI.")
