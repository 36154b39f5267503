import shlex
import shutil
import sys
import textwrap
from pathlib import Path

import click

from ..queue import schema
from .common import fail, grid_option, reports_errors, short_lived, tracking_option


@click.command("best")
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@click.option("--by", multiple=True, metavar="SETTING", default=("activation",), show_default=True,
              help="Group by this setting (repeatable).")
@click.option("--metric", default="auto", show_default=True,
              help="Lower is better. auto: val_error when the runs have one, else test_error (final epoch); "
                   "or best_test_error, test_loss, train_error, val_loss, ...")
@click.option("--include-stopped", is_flag=True,
              help=f"Also rank runs that a search stopped early (tag {schema.PRUNED}); left out by default.")
@click.option("--experiment", default=None, help="Experiment name. [default: the SPEC's experiment]")
@grid_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table: for people, under 120 characters a line; csv and json: every column, for scripts.")
@click.option("--wide", is_flag=True,
              help="Table: every column (train_error, epochs, agent_uri too), sentences unwrapped.")
@click.option("--columns", metavar="A,B,...", default=None,
              help="Table: these columns, in this order (any of the table's with --wide).")
@click.option("--register", metavar="NAME", default=None,
              help="Register the overall best setting's run (its best seed) in the MLflow model registry as "
                   "NAME (pyfunc, with signature and input example; `mlflow models predict` serves it).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="MNIST_DATA", default=None,
              help="MNIST folder, for --register's input example (test images). [default: $MNIST_DATA]")
@tracking_option
@reports_errors
def command(spec, by, metric, include_stopped, experiment, grids, fmt, wide, columns, register, data_dir,
            tracking_uri):
    """Per group of --by, the setting with the lowest mean --metric over its seeds, with its 95%
    interval, and whether the group is decided: its winner ahead of every other setting by more than
    the noise (Welch's t-test, Holm-corrected over the group), with P(a seed of the winner beats one
    of its closest rival) and, where undecided, the seeds a power estimate says would decide it.
    Failed and diverged runs are ignored.

    SPEC (default ./sweeps.yaml when present) or --experiment picks the runs; --grid narrows to
    that grid's runs, e.g. `sweep best --by activation --grid lr_by_activation`."""
    short_lived()
    from ..results import fetch_results
    from ..results.best import best_by, overall_winner
    from ..results.words import best_words, for_people
    from ..spec import load_spec
    from ..tracking import location as store

    if not spec and not experiment and Path("sweeps.yaml").exists():
        spec = "sweeps.yaml"
    sweep = load_spec(spec) if spec else None
    if sweep is None and not experiment:
        fail("give a sweep file (SPEC) or --experiment NAME")
    uri = store.existing_store(tracking_uri, "run `sweep run` first")
    results = fetch_results(sweep, uri, grids, experiment=experiment)
    try:
        best = best_by(results.runs, list(by), metric, include_stopped, sweep.adaptive if sweep else None)
    except ValueError as exc:
        fail(str(exc))
    if best.table.empty:
        fail(f"no finished, non-diverged runs with {best.metric} in experiment '{results.experiment}' yet", code=1)
    if fmt == "csv":
        click.echo(best.table.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(best.table.to_json(orient="records", indent=2))
    else:
        table = _narrowed(for_people(best), wide, columns)
        click.echo(table.to_string(index=False))
        width = None if wide or not sys.stdout.isatty() else min(shutil.get_terminal_size().columns, LINE) - 1
        click.echo("\n".join(["", *(textwrap.fill(line, width, subsequent_indent="  ") if width else line
                                     for line in best_words(best))]))  # a sentence a line for grep and pipes
    if fmt != "table" and best.stopped:
        click.echo(best_words(best)[-1], err=True)
    if register:
        from ..tracking.registry import CHAMPION, register_agent

        winner = overall_winner(best)
        export = [] if store.found_by_mlflow(uri) else [f"  export MLFLOW_TRACKING_URI={shlex.quote(uri)}"]
        version = register_agent(store.open_store(uri), winner["run_id"], register, example_pixels(data_dir))
        model = f"models:/{register}@{CHAMPION}"
        click.echo("\n".join([
            f"registered run {winner['run_id']} as {register} version {version} (alias {CHAMPION}); "
            f"to predict with it:", *export,
            f"  mlflow artifacts download -u {model}/serving_input_example.json -d .",
            f"  mlflow models predict -m {model} -i serving_input_example.json --env-manager local"]),
            err=fmt != "table")


LINE = 120  # the table, and on a terminal the sentences under it, stay under this many characters a line
NARROW_LEFT_OUT = ("train_error", "epochs", "agent_uri")  # in csv, json and --wide


def _narrowed(table, wide: bool, columns):
    """The table people read: every column with --wide, the ones named with --columns, else all but
    NARROW_LEFT_OUT."""
    import pandas as pd

    if columns:
        names = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in names if c not in table.columns]
        if unknown:
            fail(f"--columns: no column {unknown[0]!r}; columns: {', '.join(table.columns)}")
        table = table[names]
    elif not wide:
        table = table.drop(columns=[c for c in NARROW_LEFT_OUT if c in table.columns])
    return table.astype(object).map(lambda v: "" if pd.isna(v) else str(v))  # no sign space before numbers


def example_pixels(data_dir, n: int = 3):
    """The first MNIST test images as raw 0-255 rows, or blank images when MNIST is not at hand."""
    import numpy as np

    from mnist_core.files import IMAGE_MAGIC, MnistDataError, MnistDataMissing, check_mnist, read_idx

    try:
        images = read_idx(check_mnist(data_dir) / "t10k-images-idx3-ubyte", IMAGE_MAGIC)
        return images[:n].reshape(n, 784).astype("float32")
    except (MnistDataMissing, MnistDataError):
        return np.zeros((n, 784), dtype="float32")
