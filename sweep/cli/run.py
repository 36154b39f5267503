import sys

import click

from .common import INTERRUPTED, grid_option, reports_errors, spec_argument, tracking_option


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
              help="auto: runs of one shape (activation, depth, width, batch size, epochs, seed) train "
                   "together as one batched model when there are two or more; solo: each run alone; "
                   "fused: every run through the batched engine, even alone.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most networks in one fused model; larger groups are split.")
@reports_errors
def command(spec, jobs, grids, retries, tracking_uri, data_dir, device, backend, address, engine, chunk_size):
    """Train every run of SPEC that is not finished in the tracking store, and nothing else."""
    from mnist_core.data import load_mnist, resolve_data_dir
    from mnist_core.train import resolve_device

    from .. import tracking
    from ..runner import Settings, SweepInterrupted, check_remote_store, run_sweep
    from ..spec import load_spec

    sweep = load_spec(spec)
    remote = backend != "loky"
    store = tracking.store_uri(tracking_uri)
    check_remote_store(backend, store)
    if not remote:
        resolve_device(device)  # a remote worker checks its own devices
        load_mnist(data_dir, "cpu")  # a missing data set is reported once, here, not by every run
        data_dir = str(resolve_data_dir(data_dir))
    uri = tracking.resolve_tracking_uri(tracking_uri)
    settings = Settings(jobs=jobs, retries=retries, data_dir=data_dir, device=device, backend=backend,
                        address=address, engine=engine, chunk_size=chunk_size)
    bar = None

    def on_start(summary):
        nonlocal bar
        if summary.to_train == 0:
            held = f", {summary.held_elsewhere} running elsewhere" if summary.held_elsewhere else ""
            click.echo(f"nothing to train: {summary.already_done} of {summary.total} runs already done{held}")
            return
        workers = (f"{summary.jobs} worker(s) x {summary.threads} thread(s)" if backend == "loky"
                   else f"the {backend} cluster at {address or 'a new local one'}")
        click.echo(f"{summary.to_train} of {summary.total} runs to train ({summary.already_done} already done) "
                   f"with {workers}; tracking at {uri}")
        from tqdm import tqdm

        bar = tqdm(total=summary.to_train, unit="run", dynamic_ncols=True, file=sys.stderr)

    def on_outcome(outcome):
        if outcome.status == "skipped":
            line = f"  skip  {outcome.name}: finished or running elsewhere"
        elif outcome.status == "failed":
            line = f"  FAIL  {outcome.name}: {outcome.error}"
        else:
            mark = "done" if outcome.status == "done" else "DIVG"
            line = f"  {mark}  {outcome.name}: test error {100 * outcome.test_error:.2f}% ({outcome.seconds:.1f}s)"
        if bar is not None:
            bar.write(line, file=sys.stderr if outcome.status == "failed" else sys.stdout)
            if outcome.status != "failed":
                bar.update(1)
        else:
            click.echo(line)

    try:
        summary = run_sweep(sweep, uri, settings, grids, on_start=on_start, on_outcome=on_outcome)
    except (SweepInterrupted, KeyboardInterrupt):
        if bar is not None:
            bar.close()
        click.echo("\ninterrupted: runs in flight marked KILLED; `sweep run` again resumes the rest.", err=True)
        sys.exit(INTERRUPTED)
    if bar is not None:
        bar.update(bar.total - bar.n)
        bar.close()
    if summary.to_train == 0:
        return
    failed = summary.failed
    click.echo(f"\nsummary: {summary.count('done')} done, {summary.count('diverged')} diverged, "
               f"{len(failed)} failed, {summary.count('skipped')} skipped (finished or running elsewhere)"
               + (f"; {len(summary.crashes)} worker crash(es)" if summary.crashes else ""))
    for crash in summary.crashes:
        click.echo(f"  worker crash: {crash}", err=True)
    for outcome in failed:
        click.echo(f"  failed: {outcome.name}: {outcome.error}", err=True)
    click.echo(f"next: sweep best {spec} --by activation   |   sweep ui")
    if failed:
        sys.exit(1)
