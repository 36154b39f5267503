from pathlib import Path

import click

from .common import reports_errors, spec_argument, tracking_option


@click.command("report")
@spec_argument
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures and reports. [default: reports/<SPEC name>]")
@tracking_option
@reports_errors
def command(spec, out_dir, tracking_uri):
    """Figures, report.md, report.html (self-contained) and report.pdf from the runs of SPEC in the
    store; also logged as artifacts of the sweep's parent run."""
    from .. import tracking
    from ..results import fetch_results
    from ..results.analysis import analyse, drawn_runs
    from ..results.report import write_report
    from ..spec import load_spec
    from ..tracking import location as store

    sweep = load_spec(spec)
    uri = store.existing_store(tracking_uri, f"run `sweep run {spec}` first")
    results = fetch_results(sweep, uri, histories=drawn_runs)
    out, files = write_report(analyse(results), out_dir or Path("reports") / sweep.name)
    click.echo(f"report written to {out}/: " + ", ".join(f.name for f in files))
    if results.parent_run_id:
        tracking.log_artifacts(store.open_store(uri), results.parent_run_id, out, "report")
        click.echo("logged as artifacts 'report/' of the sweep's parent run")
    else:
        click.echo("not logged to MLflow: the sweep has no parent run yet")
