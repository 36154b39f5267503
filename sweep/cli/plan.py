import click

from .common import grid_option, reports_errors, spec_argument, tracking_option


@click.command("plan")
@spec_argument
@grid_option
@tracking_option
@reports_errors
def command(spec, grids, tracking_uri):
    """List the runs SPEC expands to, with their grids, settings and state. Trains nothing."""
    from .. import queue
    from ..spec import expand, load_spec

    sweep = load_spec(spec)
    runs = expand(sweep, grids)
    state = queue.read_states(sweep, runs, tracking_uri).states
    width = max(len(r.name) for r in runs)
    click.echo(f"{'run':<{width}}  {'state':<8} grids")
    for r in runs:  # the name shows every setting that differs from the defaults
        click.echo(f"{r.name:<{width}}  {state[r.key]:<8} {','.join(r.grids)}")
    click.echo(f"\n{len(runs)} runs in experiment '{sweep.experiment}': "
               + ", ".join(f"{n} {s}" for s, n in queue.count(state).items()))
