import collections

import click

from .common import grid_option, reports_errors, short_lived, spec_argument, tracking_option


@click.command("status")
@spec_argument
@grid_option
@tracking_option
@reports_errors
def command(spec, grids, tracking_uri):
    """Counts of runs per state (of the done ones: how many stopped early, diverged or were
    duplicates), each search's trials, and the failed runs with their error."""
    short_lived()
    from .. import queue
    from ..adaptive.search import slot_key
    from ..queue import schema
    from ..spec import expand, load_spec, select
    from ..tracking.location import existing_store
    from ..tracking.mlflow_store import MlflowStore

    sweep = load_spec(spec)
    runs = expand(sweep, grids)
    grid_names, search_names = select(sweep, grids)
    store = MlflowStore(existing_store(tracking_uri, f"run `sweep run {spec}` first"))
    slots = {name: [slot_key(sweep, sweep.searches[name], n) for n in range(sweep.searches[name].trials)]
             for name in search_names}
    read = queue.read_states(store, sweep.experiment, [r.key for r in runs] + [k for ks in slots.values() for k in ks])
    finished = _finished(read.attempts)
    spared, later = _adaptive(sweep, store, grids, [r.key for r in runs])
    if runs or not search_names:
        counts = queue.count({r.key: read.states[r.key] for r in runs if r.key not in spared | later})
        ended = collections.Counter(finished.get(r.key) for r in runs if read.states[r.key] == schema.DONE)
        parts = ([f"{ended['stopped']} stopped early"]
                 if ended["stopped"] or any(sweep.early_stop_for(g) for g in grid_names) else [])
        parts += [f"{ended[how]} {how}" for how in ("diverged", "duplicate") if ended[how]]
        apart = f" ({', '.join(parts)})" if parts else ""
        adaptive = ([f"{len(spared)} spared (adaptive seeds: their questions are settled)"] if spared else []) + \
            ([f"{len(later)} more seeds may follow where a question stays open"] if later else [])
        click.echo(f"experiment '{sweep.experiment}': {'up to ' if sweep.adaptive else ''}{len(runs)} runs: "
                   + ", ".join([*(f"{n} {s}" + (apart if s == schema.DONE else "") for s, n in counts.items()),
                                *adaptive]))
    for name, keys in slots.items():
        done = [k for k in keys if read.states[k] == schema.DONE]
        stopped = sum(finished.get(k) == "stopped" for k in done)
        duplicates = sum(finished.get(k) == "duplicate" for k in done)
        running = sum(read.states[k] == schema.RUNNING for k in keys)
        failed = sum(read.states[k] == schema.FAILED for k in keys)
        click.echo(f"search {name}: {len(done)} of {len(keys)} trials done ({stopped} stopped early, {duplicates} "
                   f"duplicate{'' if duplicates == 1 else 's'}), {running} running"
                   + (f", {failed} failed" if failed else ""))
    failed = [key for key, state in read.states.items() if state == schema.FAILED]
    if failed:
        errors = queue.last_errors(read.attempts)
        names = {**_latest_names(read.attempts), **{r.key: r.name for r in runs}}
        for key in failed:
            error = errors.get(key, "")
            click.echo(f"  failed: {names.get(key, key)}: {error.splitlines()[0] if error else '?'}")


def _adaptive(sweep, store, grids, keys: list) -> tuple[set, set]:
    """With adaptive seeds: the keys the rule will not want (spared) and those it does not want yet."""
    experiment_id = store.find_experiment(sweep.experiment) if sweep.adaptive else None
    if experiment_id is None:
        return set(), set()
    from ..adaptive.wanted import WantedRuns

    wanted = WantedRuns(sweep, store, experiment_id, grids)
    wanted.read(sync=True)
    return set(wanted.spared(keys)), set(wanted.later(keys))


def _finished(attempts) -> dict:
    """key -> how its latest finished run ended (schema.FINISHED_OUTCOMES)."""
    ended = sorted((a for a in attempts if a.status == "FINISHED"), key=lambda a: a.end_time or 0)
    return {a.key: a.outcome for a in ended}


def _latest_names(attempts) -> dict:
    """key -> the name of its latest attempt (a search trial's name says what it sampled)."""
    return {a.key: a.name for a in sorted(attempts, key=lambda a: a.start_time)}
