from pathlib import Path

import click

from .common import fail, grid_option, reports_errors, tracking_option


@click.command("best")
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
@reports_errors
def command(spec, by, metric, experiment, grids, fmt, register, data_dir, tracking_uri):
    """Per group of --by, the finished run with the lowest --metric (failed and diverged runs ignored).

    SPEC (default ./sweeps.yaml when present) or --experiment picks the runs; with SPEC, --grid
    narrows to that grid's runs, e.g. `sweep best --by activation --grid lr_by_activation`."""
    from .. import tracking
    from ..best import as_percent, best_by, finished_runs, tidy_runs
    from ..spec import expand, load_spec

    keys = None
    if not spec and not experiment and Path("sweeps.yaml").exists():
        spec = "sweeps.yaml"
    if spec:
        sweep = load_spec(spec)
        experiment = experiment or sweep.experiment
        keys = [r.key for r in expand(sweep, grids)]
    if not experiment:
        fail("give a sweep file (SPEC) or --experiment NAME")
    uri = tracking.existing_store(tracking_uri, "run `sweep run` first")
    experiment_id = tracking.find_experiment(uri, experiment)
    if experiment_id is None:
        fail(f"no experiment '{experiment}' in tracking store {uri}; run `sweep run` first")
    runs = finished_runs(tidy_runs(tracking.runs_frame(uri, experiment_id)), keys, grids if keys is None else ())
    table = best_by(runs, list(by), metric)
    if table.empty:
        fail(f"no finished, non-diverged runs in experiment '{experiment}' yet", code=1)
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
