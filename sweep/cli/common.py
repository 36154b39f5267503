"""What every command shares: common options, and the one place where errors become a line and an
exit status."""
from __future__ import annotations

import functools
import os
import sys

import click

from ..errors import SweepError

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

tracking_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
    help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db]")
grid_option = click.option("--grid", "grids", multiple=True, metavar="NAME",
                           help="Only this grid of the spec (repeatable). [default: all grids]")
spec_argument = click.argument("spec", type=click.Path(dir_okay=False))


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _user_error(exc: BaseException) -> bool:
    """Errors of mnist_core that a user causes (missing or broken data files, a bad device)."""
    data = sys.modules.get("mnist_core.data")  # never import torch just to look at an error
    return data is not None and isinstance(exc, tuple(
        getattr(data, name) for name in ("MnistDataMissing", "MnistDataError") if hasattr(data, name)))


def reports_errors(command):
    """Turn a named error into one line on stderr and its exit status; Ctrl-C into exit 130; a
    closed stdout into a quiet exit."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SweepError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
        except BrokenPipeError:
            quiet_exit_on_closed_stdout()
        except Exception as exc:
            if _user_error(exc):
                fail(str(exc))
            raise
    return wrapper


def quiet_exit_on_closed_stdout():
    """The reader of our output went away (`sweep ... | head -1`): stop without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python would otherwise complain again when flushing at exit
    sys.exit(141)  # 128 + SIGPIPE, as a shell reports a closed pipe
