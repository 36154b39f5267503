import sys

import click

from ..execute.settings import SETTINGS
from ..interrupts import signals_stop
from .common import grid_option, max_runs_option, reports_errors, spec_argument, tracking_option


def settings_options(command):
    """One option per field of the sweep's Settings, with its default and help (execute/settings.py)."""
    for name, f in reversed(SETTINGS.items()):
        meta = f.metadata
        flags = [meta.get("option", f"--{name.replace('_', '-')}"), *([meta["short"]] if "short" in meta else [])]
        command = click.option(*flags, name, type=_click_type(f), default=f.default, show_default=f.default is not None,
                               metavar=meta.get("metavar"), envvar=meta.get("envvar"), help=meta["help"])(command)
    return command


def _click_type(f):
    meta = f.metadata
    if "/" in meta.get("option", ""):
        return None  # a flag: --wait/--no-wait
    if "choices" in meta:
        return click.Choice(meta["choices"])
    if meta.get("folder"):
        return click.Path(file_okay=False)
    number = {"int": click.IntRange, "float": click.FloatRange}.get(str(f.type).removeprefix("Optional[").rstrip("]"))
    return number(min=meta.get("min")) if number else None


@click.command("run")
@spec_argument
@grid_option
@tracking_option
@settings_options
@max_runs_option
@reports_errors
def command(spec, grids, tracking_uri, max_runs, **chosen):
    """Train every run of SPEC (its grids and searches) that is not finished in the tracking store,
    and nothing else."""
    from ..execute import Settings, SweepInterrupted, check_settings, exit_status, run_sweep
    from ..spec import MAX_RUNS, load_spec
    from .progress import Printer

    sweep = load_spec(spec, max_runs=max_runs or MAX_RUNS)
    uri = tracking_uri
    settings = Settings(**chosen)
    check_settings(settings, uri)
    if settings.backend == "loky":  # a remote worker checks its own device and data
        settings = _checked_locally(settings)
    printer = Printer(uri, None if settings.backend == "loky" else
                      f"the {settings.backend} cluster at {settings.address or 'a new local one'}")
    try:
        with signals_stop():
            summary = run_sweep(sweep, uri, settings, grids, printer)
    except SweepInterrupted as exc:
        printer.close()
        if exc.unended:
            click.echo(f"{exc}; the store refused to record the stop ({exc.unended}): runs left RUNNING are "
                       f"taken over once their leases lapse (within {settings.lease_seconds:g} s) "
                       f"by `sweep run {spec}`.",
                       err=True)
        else:
            click.echo(f"{exc}: runs in flight marked KILLED; `sweep run {spec}` again resumes the rest.", err=True)
        sys.exit(exit_status(exc))
    finally:
        printer.close()
    printer.summary(summary, spec, answer_command(sweep, spec, grids))
    sys.exit(exit_status(None, summary))


def answer_command(sweep, path: str, grids=()) -> str:
    """The `sweep best` that answers the first selected grid's question: grouped by what the grid
    varies besides lr (each value at its own best lr), or the search's best trial."""
    name = next(iter(grids), None) or next(iter([*sweep.grids, *sweep.searches]))
    varied = [s for s, values in sweep.grids.get(name, {}).items() if len(values) > 1 and s not in ("lr", "seed")]
    return f"sweep best {path} --grid {name}" + "".join(f" --by {s}" for s in varied)


def _checked_locally(settings):
    """A bad device or missing data is reported once, here, not by every run."""
    import dataclasses

    from mnist_core.files import check_mnist

    from ..errors import SettingsError

    try:
        if settings.device not in ("auto", "cpu"):  # only then torch (seconds to import) is needed, for CUDA
            from mnist_core.trainer import resolve_device

            resolve_device(settings.device)
    except ValueError as exc:
        raise SettingsError(f"--device {settings.device}: {exc}") from None
    return dataclasses.replace(settings, data_dir=str(check_mnist(settings.data_dir, download=True)))
