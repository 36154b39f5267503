import time

import click

from .common import grid_option, max_runs_option, reports_errors, short_lived, spec_argument, tracking_option


@click.command("plan")
@spec_argument
@grid_option
@tracking_option
@max_runs_option
@reports_errors
def command(spec, grids, tracking_uri, max_runs):
    """List the runs and searches SPEC expands to, with their grids and their state as the store last
    showed it. Trains nothing and reads no store (`sweep status` does)."""
    short_lived()
    from .. import queue
    from ..spec import MAX_RUNS, describe_search, expand, load_spec, select
    from ..tracking.location import store_uri

    sweep = load_spec(spec, max_runs=max_runs or MAX_RUNS)
    grid_names, search_names = select(sweep, grids)
    runs = expand(sweep, grid_names) if grid_names else []
    index = queue.Index.last_read(queue.index_path(store_uri(tracking_uri)), sweep.experiment)
    read = queue.last_read_states(index, [r.key for r in runs]) if index is not None else None
    spared = set()
    if read and sweep.adaptive:  # as the mirror last saw the finished runs
        from ..adaptive.wanted import WantedRuns

        wanted = WantedRuns(sweep, None, index.experiment_id, grid_names, index=index)
        wanted.read()
        spared = set(wanted.spared(read.states))
    if runs:
        width = max(len(r.name) for r in runs)
        click.echo(f"{'run':<{width}}  {'state':<8} grids")
        for r in runs:  # the name shows every setting that differs from the defaults
            state = "spared" if r.key in spared else read.states[r.key] if read else "?"
            click.echo(f"{r.name:<{width}}  {state:<8} {','.join(r.grids)}")
    for name in search_names:
        search = sweep.searches[name]
        lines = describe_search(search)
        if read:
            done = sum(a.status == "FINISHED" and a.search == name for a in read.attempts)
            lines[0] += f"; {done} of {search.trials} trials done"
        click.echo(("\n" if runs else "") + "\n".join(lines))
    counts = ", ".join([*(f"{n} {s}" for s, n in queue.count({k: v for k, v in read.states.items()
                                                                if k not in spared}).items()),
                        *([f"{len(spared)} spared"] if spared else [])]) if read else "states not read yet"
    if sweep.adaptive:
        click.echo(f"\nadaptive seeds: every setting gets seeds 1-{sweep.adaptive.min}, then seeds up to "
                   f"{sweep.adaptive.max} go where a question is still open; `sweep status` counts the spared runs")
    click.echo(f"\n{'up to ' if sweep.adaptive else ''}{len(runs)} runs in experiment '{sweep.experiment}'"
               + (f" and {len(search_names)} search(es)" if search_names else "") + f": {counts}")
    if read:
        click.echo(f"(states as the store showed them at {time.strftime('%H:%M:%S', time.localtime(read.synced_at))};"
                   f" `sweep status` reads it again)")
