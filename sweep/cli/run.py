import contextlib
import signal
import sys

import click

from .common import grid_option, reports_errors, spec_argument, tracking_option


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is (the signal decides the exit status)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_stop_the_sweep():
    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@click.command("run")
@spec_argument
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Parallel workers. [default: the GPU count when there are several, else the CPU cores]")
@grid_option
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Extra attempts for a run that fails.")
@tracking_option
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="MNIST_DATA", default=None,
              help="Folder with MNIST. [default: $MNIST_DATA, else ./data]")
@click.option("--device", default="auto", show_default=True,
              help="auto (one GPU per worker when several, CUDA when one), cpu, cuda or cuda:N.")
@click.option("--backend", type=click.Choice(["loky", "dask", "ray"]), default="loky", show_default=True,
              help="joblib backend: loky (this machine), dask or ray (a cluster; needs a tracking server).")
@click.option("--address", default=None, metavar="ADDRESS",
              help="Scheduler of an existing cluster: tcp://HOST:8786 for dask, HOST:6379 or ray://HOST:10001 "
                   "for ray. [default: start a local one]")
@click.option("--engine", type=click.Choice(["auto", "solo", "fused"]), default="auto", show_default=True,
              help="auto: runs of one shape (activation, depth, width, batch size, epochs) train together "
                   "as one batched model when there are two or more; solo: each run alone; fused: every "
                   "run through the batched engine, even alone.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most networks in one fused model; larger groups are split.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="When another live process holds runs of this sweep: wait for it, then train what it "
                   "leaves (--wait), or exit with status 3 saying the sweep is not complete (--no-wait).")
@click.option("--lease", "lease_seconds", type=click.FloatRange(min=6), default=60, show_default=True,
              metavar="SECONDS", help="How long a claimed run outlives its holder's last heartbeat before "
                                      "another process may take it over.")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Allow a sweep of up to N runs. [default: 100,000]")
@reports_errors
def command(spec, jobs, grids, retries, tracking_uri, data_dir, device, backend, address, engine, chunk_size,
            wait, lease_seconds, max_runs):
    """Train every run of SPEC (its grids and searches) that is not finished in the tracking store,
    and nothing else."""
    from ..runner import Settings, SweepInterrupted, check_settings, exit_status, run_sweep
    from ..spec import MAX_RUNS, load_spec
    from .progress import Printer

    sweep = load_spec(spec, max_runs=max_runs or MAX_RUNS)
    uri = tracking_uri
    settings = Settings(jobs=jobs, retries=retries, data_dir=data_dir, device=device, backend=backend,
                        address=address, engine=engine, chunk_size=chunk_size, wait=wait,
                        lease_seconds=lease_seconds)
    check_settings(settings, uri)
    if backend == "loky":  # a remote worker checks its own device and data
        settings = _checked_locally(settings)
    printer = Printer(uri, None if backend == "loky" else f"the {backend} cluster at {address or 'a new local one'}")
    try:
        with signals_stop_the_sweep():
            summary = run_sweep(sweep, uri, settings, grids, printer)
    except SweepInterrupted as exc:
        printer.close()
        if exc.unended:
            click.echo(f"{exc}; the store refused to record the stop ({exc.unended}): runs left RUNNING are "
                       f"taken over once their leases lapse (within {lease_seconds:g} s) by `sweep run {spec}`.",
                       err=True)
        else:
            click.echo(f"{exc}: runs in flight marked KILLED; `sweep run {spec}` again resumes the rest.", err=True)
        sys.exit(exit_status(exc))
    finally:
        printer.close()
    printer.summary(summary, spec)
    sys.exit(exit_status(None, summary))


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
