import click

from .common import grid_option, reports_errors, short_lived, spec_argument, tracking_option


@click.command("status")
@spec_argument
@grid_option
@tracking_option
@reports_errors
def command(spec, grids, tracking_uri):
    """Counts of runs per state (runs stopped early apart), each search's trials, and the failed runs
    with their error."""
    short_lived()
    from .. import queue
    from ..index import Index
    from ..search import slot_key
    from ..spec import expand, load_spec, select
    from ..store import store_uri

    sweep = load_spec(spec)
    runs = expand(sweep, grids)
    grid_names, search_names = select(sweep, grids)
    read = queue.read_states(sweep, runs, tracking_uri)
    index = Index.last_read(store_uri(tracking_uri), sweep.experiment) if read.records else None
    finished = _finished(index.rows("FINISHED") if index is not None else [])
    if runs or not search_names:
        counts = queue.count(read.states)
        stopped = sum(finished.get(r.key) == "stopped" for r in runs)
        apart = f" ({stopped} stopped early)" if stopped or any(sweep.early_stop_for(g) for g in grid_names) else ""
        click.echo(f"experiment '{sweep.experiment}': {len(runs)} runs: "
                   + ", ".join(f"{n} {s}" + (apart if s == "done" else "") for s, n in counts.items()))
    slots = {name: [slot_key(sweep, sweep.searches[name], n) for n in range(sweep.searches[name].trials)]
             for name in search_names}
    states = dict(read.states)
    for name, keys in slots.items():
        states.update(queue.states(keys, read.records))
        done = [k for k in keys if states[k] == "done"]
        stopped = sum(finished.get(k) == "stopped" for k in done)
        duplicates = sum(finished.get(k) == "duplicate" for k in done)
        running = sum(states[k] == "running" for k in keys)
        failed = sum(states[k] == "failed" for k in keys)
        click.echo(f"search {name}: {len(done)} of {len(keys)} trials done ({stopped} stopped early, {duplicates} "
                   f"duplicate{'' if duplicates == 1 else 's'}), {running} running"
                   + (f", {failed} failed" if failed else ""))
    errors = queue.last_errors(read.records)
    names = {r.key: r.name for r in runs}
    if index is not None and any(states[k] == "failed" for keys in slots.values() for k in keys):
        names.update(_trial_names(index.rows(), slots))  # every run's row: read only to name a failed trial
    for key, state in states.items():
        if state == "failed":
            error = errors.get(key, "")
            click.echo(f"  failed: {names.get(key, key)}: {error.splitlines()[0] if error else '?'}")


def _finished(rows) -> dict:
    """key -> how its latest finished run ended: stopped (early), duplicate (of a finished run) or done."""
    from ..lease import DUPLICATE_OF, KEY, PRUNED

    out = {}
    for row in sorted(rows, key=lambda r: r.end_time or 0):
        out[row.tags.get(KEY, "")] = ("duplicate" if row.tags.get(DUPLICATE_OF) else
                                      "stopped" if row.tags.get(PRUNED) == "true" else "done")
    return out


def _trial_names(rows, slots: dict) -> dict:
    """key -> the name of a search trial's latest attempt."""
    from ..lease import KEY

    wanted = {k for keys in slots.values() for k in keys}
    return {row.tags.get(KEY): row.name for row in sorted(rows, key=lambda r: r.start_time or 0)
            if row.tags.get(KEY) in wanted}
