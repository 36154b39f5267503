"""Searches: Optuna samples the trials (random or TPE), the queue trains them.

A search has `trials` numbered slots; a slot's run carries the search's name and its number, and
its queue key names the slot, so that the claim that trains a trial is the queue's ordinary claim:
two processes never train one slot twice, and together they fill exactly `trials` slots. There is
no second database: whenever trials are needed, the study is rebuilt from the search's runs in the
store (their params, and the objective from their metrics; a stopped run is a PRUNED trial, a run
in flight a RUNNING one, which TPE's constant liar treats as taken), and the sampler asks.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Iterable, Optional

from ..queue import schema
from ..spec import PlannedRun, SweepSpec, run_name, trial_config
from ..spec.space import SearchSpec


def distributions(search: SearchSpec) -> dict:
    """Optuna distributions of the settings a search samples (constants are fixed, not sampled)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for setting, p in search.space.items():
        if p.kind == "categorical":
            out[setting] = CategoricalDistribution(p.choices)
        elif p.kind == "float":
            out[setting] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            out[setting] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return out


def identity(spec: SweepSpec, search: SearchSpec) -> str:
    """What makes two searches one: the experiment, name, method, sampler seed, space and the defaults
    (not the budget, so that raising `trials` extends a search)."""
    blob = json.dumps({"experiment": spec.experiment, "search": search.name, "method": search.method,
                       "seed": search.seed, "space": {k: repr(v) for k, v in search.space.items()},
                       "defaults": spec.defaults}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def slot_key(spec: SweepSpec, search: SearchSpec, trial: int) -> str:
    return hashlib.sha256(f"{identity(spec, search)}:{trial}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Trial:
    """A slot of a search as the store holds it."""
    number: int
    state: str               # done, stopped (early), running or failed (diverged and duplicate runs are done)
    params: dict             # setting -> value, typed
    curve: tuple             # objective per epoch
    value: float             # the final objective (nan unless done)


def trials_in_store(search: SearchSpec, rows: Iterable, states: dict) -> dict:
    """The search's slots that have a run (latest attempt that matters per slot), by number."""
    found: dict[int, Trial] = {}
    for row in rows:
        run = schema.decode(row)
        number = -1 if run.trial is None else run.trial
        state = ("running" if run.status == "RUNNING" else "failed" if run.status != "FINISHED"
                 else "stopped" if run.stopped else "done")
        if states.get(run.key) == schema.RUNNING and state != "running":
            continue  # an ended attempt of a slot someone is training again
        if number in found and found[number].state in ("done", "stopped") and state not in ("done", "stopped"):
            continue
        params = {k: schema.setting(k, row.params[k]) for k in search.space if k in row.params}
        metric = schema.objective(row.params.get("validation"))
        value = row.metrics.get(metric, math.nan) if state == "done" or run.duplicate_of else math.nan
        found[number] = Trial(number, state, params, run.curve, value)
    return found


def sampler(search: SearchSpec, asked_so_far: int):
    """The search's sampler, seeded by its seed and how many trials the study holds (a rebuilt
    study asks anew instead of repeating the previous round's first proposal)."""
    import warnings

    import optuna

    seed = (search.seed * 1_000_003 + asked_so_far) % 2**32
    if search.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # constant_liar is marked experimental; it is what parallel TPE needs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                          n_startup_trials=min(10, max(2, search.trials // 3)))


def study_of(search: SearchSpec, trials: dict):
    """The search's Optuna study, rebuilt from the trials in the store."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(search)
    study = optuna.create_study(direction="minimize", sampler=sampler(search, len(trials)))
    for trial in sorted(trials.values(), key=lambda t: t.number):
        params = {k: v for k, v in trial.params.items() if k in dists}
        steps = {step: v for step, v in enumerate(trial.curve, 1) if math.isfinite(v)}
        if trial.state == "done" and math.isfinite(trial.value):
            state, value = TrialState.COMPLETE, trial.value
        else:
            state, value = {"stopped": TrialState.PRUNED, "running": TrialState.RUNNING}.get(
                trial.state, TrialState.FAIL), None
        try:
            study.add_trial(create_trial(params=params, distributions=dists, state=state, value=value,
                                         intermediate_values=steps))
        except ValueError:
            continue  # params outside this space (an older run of the slot): they cannot inform it
    return study


def ask(spec: SweepSpec, search: SearchSpec, trials: dict, free: list[int], n: int) -> list[PlannedRun]:
    """Up to `n` new trials for the free slots `free`, asked at once (TPE's constant liar counts the
    earlier ones as running, so they differ)."""
    if not free or n <= 0:
        return []
    study = study_of(search, trials)
    dists = distributions(search)
    planned = []
    for number in free[:n]:
        trial = study.ask(dists)
        config = trial_config(spec, search, trial.params)
        planned.append(PlannedRun(config, slot_key(spec, search, number),
                                  f"{search.name}-{number}-{run_name(config)}", (), search.name, number))
    return planned


def free_slots(spec: SweepSpec, search: SearchSpec, states: dict) -> list[int]:
    """The slot numbers nobody has done nor holds (a failed slot is tried again)."""
    return [n for n in range(search.trials)
            if states.get(slot_key(spec, search, n), "pending") in ("pending", "failed")]


def best_so_far(values: Iterable[float]) -> list[float]:
    """The lowest finite value up to each position (NaN until the first finite one): NaNs, for
    trials without a result, never lower it."""
    out, best = [], math.inf
    for v in values:
        best = min(best, v) if math.isfinite(v) else best
        out.append(best if math.isfinite(best) else math.nan)
    return out


def importance(search: SearchSpec, trials: dict, seed: int = 0) -> Optional[dict]:
    """Each sampled setting's importance for the objective (Optuna's default evaluator, fANOVA, its
    random forest seeded with `seed` so that a report says the same each time) on the study rebuilt
    from the store, largest first, summing to 1; None with fewer than two complete trials or
    nothing to vary."""
    import optuna

    study = study_of(search, trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not distributions(search):
        return None
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # e.g. every complete trial has the same value
        return None
