"""What every command shares: common options, and the one place where errors and Ctrl-C become a
line and an exit status."""
from __future__ import annotations

import functools
import gc
import os
import signal
import sys

import click

from ..errors import SweepError
from ..interrupts import INTERRUPTED, exit_interrupted, interrupt_command


class OptionError(click.ClickException):
    """A SweepError met while click reads the options: one line and the error's exit status."""

    def __init__(self, error: SweepError):
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


def _checked_store(ctx, param, uri):
    """The store every command reads: the URI given, else $MLFLOW_TRACKING_URI, else ./mlflow.db;
    its form checked, a server asked once (briefly) whether it answers, a local file whether it is
    a store. Creating and writing are left to the commands that write (`store.open_store`)."""
    from ..tracking.location import store_exists, store_uri

    try:
        uri = store_uri(uri)
        store_exists(uri)
    except SweepError as exc:
        raise OptionError(exc) from None
    return uri


tracking_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, callback=_checked_store,
    help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow's own default: "
         "./mlflow.db, artifacts in ./mlruns/)]")
grid_option = click.option("--grid", "grids", multiple=True, metavar="NAME",
                           help="Only this grid or search of the spec (repeatable). [default: all of them]")
spec_argument = click.argument("spec", type=click.Path(dir_okay=False))
max_runs_option = click.option("--max-runs", type=click.IntRange(min=1), default=None, metavar="N",
                               help="Allow a sweep of up to N runs. [default: 100,000]")


def short_lived() -> None:
    """A command that reads and ends: skip the garbage collector's passes over everything MLflow and
    pandas load (about half a second per command; nothing here lives long enough to need them)."""
    gc.disable()


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _user_error(exc: BaseException) -> bool:
    """Errors of mnist_core that a user causes (missing or broken data files, a bad device)."""
    data = sys.modules.get("mnist_core.files")  # never import anything just to look at an error
    return data is not None and isinstance(exc, tuple(
        getattr(data, name) for name in ("MnistDataMissing", "MnistDataError") if hasattr(data, name)))


def reports_errors(command):
    """Turn a named error into one line on stderr and its exit status; Ctrl-C into exit 130; a
    closed stdout into a quiet exit. Under `sweep` (see `entry`), Ctrl-C in the command's body
    raises KeyboardInterrupt (`interrupt_command`), and ends the process at once again afterwards."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        program = signal.getsignal(signal.SIGINT) is exit_interrupted
        if program:
            signal.signal(signal.SIGINT, interrupt_command)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            if program:
                signal.signal(signal.SIGINT, exit_interrupted)  # a second Ctrl-C: no traceback either
            click.echo("interrupted", err=True)
            sys.exit(INTERRUPTED)
        except SweepError as exc:
            fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            quiet_exit_on_closed_stdout()
        except Exception as exc:
            if _user_error(exc):
                fail(str(exc))
            raise
        finally:
            if program:
                signal.signal(signal.SIGINT, exit_interrupted)
    return wrapper


def quiet_exit_on_closed_stdout():
    """The reader of our output went away (`sweep ... | head -1`): stop without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python would otherwise complain again when flushing at exit
    sys.exit(141)  # 128 + SIGPIPE, as a shell reports a closed pipe
