"""`sweep`: plan, run, inspect and compare tracked MNIST MLP sweeps. Thin: parse, call, print."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from mnist_core.fused import DEFAULT_CHUNK_SIZE

from .spec import SpecError, expand, load_spec

TRACKING_HELP = "MLflow tracking URI. [default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db]"


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def user_errors(command):
    """Turn a user's mistake (bad spec, unreachable store, bad value) into one line and exit 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from mnist_core.data import MnistDataMissing

        from .dispatch import BackendError
        from .tracking import TrackingError

        try:
            return command(*args, **kwargs)
        except (SpecError, TrackingError, MnistDataMissing, BackendError, ValueError) as exc:
            _fail(str(exc))
    return wrapper


tracking_option = click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help=TRACKING_HELP)
grid_option = click.option("--grid", "grids", multiple=True, metavar="NAME",
                           help="Only this grid of the spec (repeatable). [default: all grids]")
spec_argument = click.argument("spec", type=click.Path(dir_okay=False))


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def _store_uri(tracking_uri):
    """The tracking URI to read from, without creating anything."""
    from . import tracking

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri()


def _read_queue(spec_path, grids, tracking_uri):
    """The sweep, its runs, each run's queue state and the experiment's run records (none when
    nothing is tracked yet), read without writing anything."""
    from . import queue, tracking

    sweep = load_spec(spec_path)
    runs = expand(sweep, grids)
    uri = _store_uri(tracking_uri)
    experiment_id = tracking.find_experiment(uri, sweep.experiment) if _store_exists(uri) else None
    records = tracking.run_records(uri, experiment_id) if experiment_id else []
    return sweep, runs, queue.states([r.key for r in runs], records), records


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mnist-sweep")
def main():
    """Tracked, resumable sweeps of an MNIST MLP over activation, learning rate, depth, width and
    schedule. Runs go to MLflow; `sweep best` and `sweep ui` compare them."""


@main.command()
@spec_argument
@grid_option
@tracking_option
@user_errors
def plan(spec, grids, tracking_uri):
    """List the runs SPEC expands to, with their grids, settings and state. Trains nothing."""
    from . import queue

    sweep, runs, state, _ = _read_queue(spec, grids, tracking_uri)
    width = max(len(r.name) for r in runs)
    click.echo(f"{'run':<{width}}  {'state':<8} grids")
    for r in runs:  # the name shows every setting that differs from the defaults
        click.echo(f"{r.name:<{width}}  {state[r.key]:<8} {','.join(r.grids)}")
    click.echo(f"\n{len(runs)} runs in experiment '{sweep.experiment}': "
               + ", ".join(f"{n} {s}" for s, n in queue.count(state).items()))


@main.command()
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
@click.option("--chunk-size", type=click.IntRange(min=1), default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Most networks in one fused model; larger groups are split.")
@user_errors
def run(spec, jobs, grids, retries, tracking_uri, data_dir, device, backend, address, engine, chunk_size):
    """Train every run of SPEC that is not finished in the tracking store, and nothing else."""
    from mnist_core.data import load_mnist, resolve_data_dir
    from mnist_core.train import resolve_device

    from . import tracking
    from .runner import Settings, SweepInterrupted, run_sweep

    sweep = load_spec(spec)
    remote = backend != "loky"
    store = _store_uri(tracking_uri)
    if remote and not tracking.is_remote(store):
        _fail(f"the {backend} backend runs workers that cannot write the local store {store}. "
              f"Start a tracking server that they can reach, e.g.\n"
              f"  mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlruns/mlflow.db "
              f"--artifacts-destination ./mlruns/artifacts\n"
              f"(--host: an address the workers reach; a PostgreSQL URI for a team), then pass "
              f"--tracking-uri http://HOST:5000 or set MLFLOW_TRACKING_URI.")
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
        sys.exit(130)
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


@main.command()
@spec_argument
@grid_option
@tracking_option
@user_errors
def status(spec, grids, tracking_uri):
    """Counts of runs per state, and the failed runs with their error."""
    from . import queue

    sweep, runs, state, records = _read_queue(spec, grids, tracking_uri)
    click.echo(f"experiment '{sweep.experiment}': {len(runs)} runs: "
               + ", ".join(f"{n} {s}" for s, n in queue.count(state).items()))
    errors = queue.last_errors(records)
    for r in runs:
        if state[r.key] == "failed":
            click.echo(f"  failed: {r.name}: {errors.get(r.key, '').splitlines()[0] if errors.get(r.key) else '?'}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@click.option("--by", multiple=True, metavar="SETTING", default=("activation",), show_default=True,
              help="Group by this setting (repeatable).")
@click.option("--metric", default="test_error", show_default=True,
              help="Lower is better: test_error (final), best_test_error, test_loss, train_error, ...")
@click.option("--experiment", default=None, help="Experiment name. [default: the SPEC's experiment]")
@grid_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--register", metavar="NAME", default=None,
              help="Register the overall best run's agent in the MLflow model registry as NAME "
                   "(pyfunc, with signature and input example; `mlflow models predict` serves it).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="MNIST_DATA", default=None,
              help="MNIST folder, for --register's input example (test images). [default: $MNIST_DATA]")
@tracking_option
@user_errors
def best(spec, by, metric, experiment, grids, fmt, register, data_dir, tracking_uri):
    """Per group of --by, the finished run with the lowest --metric (failed and diverged runs ignored).

    SPEC (default ./sweeps.yaml when present) or --experiment picks the runs; with SPEC, --grid
    narrows to that grid's runs, e.g. `sweep best --by activation --grid lr_by_activation`."""
    from . import tracking
    from .best import as_percent, best_by, finished_runs, tidy_runs

    keys = None
    if not spec and not experiment and Path("sweeps.yaml").exists():
        spec = "sweeps.yaml"
    if spec:
        sweep = load_spec(spec)
        experiment = experiment or sweep.experiment
        keys = [r.key for r in expand(sweep, grids)]
    if not experiment:
        _fail("give a sweep file (SPEC) or --experiment NAME")
    uri = _store_uri(tracking_uri)
    experiment_id = tracking.find_experiment(uri, experiment) if _store_exists(uri) else None
    if experiment_id is None:
        _fail(f"no experiment '{experiment}' in tracking store {uri}; run `sweep run` first")
    runs = finished_runs(tidy_runs(tracking.runs_frame(uri, experiment_id)), keys, grids if keys is None else ())
    table = best_by(runs, list(by), metric)
    if table.empty:
        _fail(f"no finished, non-diverged runs in experiment '{experiment}' yet", code=1)
    if fmt == "csv":
        click.echo(table.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(table.to_json(orient="records", indent=2))
    else:
        click.echo(as_percent(table).to_string(index=False))
    if register:
        winner = table.loc[table[metric].idxmin()]
        version = tracking.register_agent(uri, winner["run_id"], register, _example_pixels(data_dir))
        click.echo(f"registered run {winner['run_id']} as model '{register}' version {version}: "
                   f"mlflow models predict -m models:/{register}/{version} -i INPUT.json --env-manager local",
                   err=fmt != "table")


def _example_pixels(data_dir, n: int = 3):
    """The first MNIST test images as raw 0-255 rows, or blank images when MNIST is not at hand."""
    import numpy as np

    from mnist_core.data import MnistDataMissing, open_datasets, resolve_data_dir

    try:
        _, test = open_datasets(resolve_data_dir(data_dir), download=False)
        return test.data[:n].reshape(n, 784).numpy().astype("float32")
    except MnistDataMissing:
        return np.zeros((n, 784), dtype="float32")


@main.command()
@spec_argument
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures and reports. [default: reports/<SPEC name>]")
@tracking_option
@user_errors
def report(spec, out_dir, tracking_uri):
    """Figures, report.md, report.html (self-contained) and report.pdf from the runs of SPEC in the
    store; also logged as artifacts of the sweep's parent run."""
    from .report import write_report

    sweep = load_spec(spec)
    uri = _store_uri(tracking_uri)
    if not _store_exists(uri):
        _fail(f"no tracking store at {uri}; run `sweep run {spec}` first")
    out, files, logged = write_report(sweep, uri, out_dir or Path("reports") / sweep.name)
    click.echo(f"report written to {out}/: " + ", ".join(f.name for f in files))
    click.echo("logged as artifacts 'report/' of the sweep's parent run" if logged
               else "not logged to MLflow: the sweep has no parent run yet")


@main.command()
@tracking_option
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; keep it local.")
def ui(tracking_uri, port, host):
    """Open the MLflow UI on the project's store."""
    from . import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if tracking.is_remote(uri):
        _fail(f"{uri} is a tracking server: open it in a browser instead")
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    click.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    sys.exit(subprocess.call([mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]))


if __name__ == "__main__":
    main()
