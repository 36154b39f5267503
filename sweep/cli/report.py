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
    from ..report import write_report
    from ..spec import load_spec

    sweep = load_spec(spec)
    uri = tracking.existing_store(tracking_uri, f"run `sweep run {spec}` first")
    out, files, logged = write_report(sweep, uri, out_dir or Path("reports") / sweep.name)
    click.echo(f"report written to {out}/: " + ", ".join(f.name for f in files))
    click.echo("logged as artifacts 'report/' of the sweep's parent run" if logged
               else "not logged to MLflow: the sweep has no parent run yet")
