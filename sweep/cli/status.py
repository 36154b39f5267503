import click

from .common import grid_option, reports_errors, spec_argument, tracking_option


@click.command("status")
@spec_argument
@grid_option
@tracking_option
@reports_errors
def command(spec, grids, tracking_uri):
    """Counts of runs per state, and the failed runs with their error."""
    from .. import queue
    from ..spec import expand, load_spec

    sweep = load_spec(spec)
    runs = expand(sweep, grids)
    read = queue.read_states(sweep, runs, tracking_uri)
    click.echo(f"experiment '{sweep.experiment}': {len(runs)} runs: "
               + ", ".join(f"{n} {s}" for s, n in queue.count(read.states).items()))
    errors = queue.last_errors(read.records)
    for r in runs:
        if read.states[r.key] == "failed":
            error = errors.get(r.key, "")
            click.echo(f"  failed: {r.name}: {error.splitlines()[0] if error else '?'}")
