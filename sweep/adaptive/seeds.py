"""Adaptive seeds: seeds go where a question is still open, until its leader is told apart from
every rival or `max` seeds are reached. Pure: numbers and keys in, keys out; no store, no torch.

A grid asks questions. When it varies lr and other settings, each value of the others asks which lr
is best for it (activation=relu: lr 0.03, 0.1, 0.3, 1.0), and the winners of those are compared
across (which activation, each at its best lr); otherwise the grid asks one question over all its
settings. Every setting gets `min` seeds. Then, level by level (n = min, ..., max), each question
looks at its settings' values over seeds 1..n (a setting dropped earlier keeps the seeds it has):

- the leader is the setting with the lowest mean; a rival is *out* when Welch's test tells it from
  the leader (Holm over the question's rivals) at the level's alpha; a setting with fewer than two
  values (its seeds diverged) is out, and so is a question left without rivals: it is *decided*;
- a question is *spared* when some open rival could not be told from the leader even with `max`
  seeds each, at the gap and spread seen (stats.seeds_needed at FUTILITY_POWER): more seeds would
  not decide it;
- the leader and the open rivals of every open question get seed n + 1.

A question is looked at once per number of seeds its settings have (the most any of them has: a
question none of whose settings got a seed keeps its data and its last verdict), so at most
`max - min + 1` times. Each look tests at its share of alpha, a weighted Bonferroni over those looks
(alpha_at): a question is called decided falsely, whichever look decides it, at most alpha of the
time (shown by simulation in tests/sweep/adaptive/test_seeds.py). Sparing a question only stops its
seeds; it spends no alpha.

Everything is replayed from the finished results on every call: any process, resumed or not, wants
the same runs from the same store. A run that is not finished yet (or that failed) holds its whole
grid at its level until it trains: `sweep run` again retries it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Optional

import numpy as np

from .. import stats
from ..spec import AdaptiveSeeds, SweepSpec, expand

LAST_LOOK_SHARE = 0.8   # of alpha, spent at the last look
FUTILITY_POWER = 0.35  # spared when even `max` seeds would tell the closest rival apart less often than this


def looks(rule: AdaptiveSeeds) -> int:
    """How often a question may be looked at: once at each n from min to max."""
    return rule.max - rule.min + 1


def alpha_at(rule: AdaptiveSeeds, n: int, alpha: float = stats.ALPHA) -> float:
    """The alpha of the look at n seeds: a weighted Bonferroni over the looks, most of alpha kept
    for the last (where a question has every seed it can get), the rest split evenly."""
    if looks(rule) == 1:
        return alpha
    if n >= rule.max:
        return alpha * LAST_LOOK_SHARE
    return alpha * (1 - LAST_LOOK_SHARE) / (looks(rule) - 1)


@dataclass(frozen=True)
class Look:
    """One question at one level."""
    leader: Optional[Hashable]       # None when no setting has two values
    open: tuple = ()                 # rivals not told apart from the leader
    state: str = "open"              # open (more seeds), decided, spared, undecided (max reached), waiting
    n: int = 0                       # the level: seeds 1..n of the settings in contention
    p_holm: float = math.nan         # the closest open rival's corrected p (the largest)


def look(values: Mapping[Hashable, Iterable[float]], rule: AdaptiveSeeds, n: int) -> Look:
    """The leader of `values` (setting -> its values, NaN where a seed gave none) and the rivals not
    told apart from it at the level's alpha; whether the question is decided, spared or open."""
    clean = {s: v[~np.isnan(v)] for s, v in ((s, np.asarray(list(v), dtype=float)) for s, v in values.items())}
    testable = {s: v for s, v in clean.items() if len(v) >= 2}
    if not testable:
        return Look(None, (), "decided" if clean else "open", n)
    leader = min(testable, key=lambda s: (testable[s].mean(), list(testable).index(s)))
    rivals = [s for s in testable if s != leader]
    if not rivals:
        return Look(leader, (), "decided", n)
    corrected = stats.holm(stats.welch_ps(testable[leader], [testable[s] for s in rivals]))
    open_ = tuple(s for s, p in zip(rivals, corrected) if not p < alpha_at(rule, n))
    if not open_:
        return Look(leader, (), "decided", n)
    p_open = float(max(corrected[rivals.index(s)] for s in open_))
    if n >= rule.max:
        return Look(leader, open_, "undecided", n, p_open)
    if n > rule.min and any(_hopeless(testable[leader], testable[s], rule) for s in open_):
        return Look(leader, open_, "spared", n, p_open)
    return Look(leader, open_, "open", n, p_open)


def _hopeless(a: np.ndarray, b: np.ndarray, rule: AdaptiveSeeds) -> bool:
    return stats.power_at(a, b, rule.max, alpha=alpha_at(rule, rule.max)) < FUTILITY_POWER


@dataclass(frozen=True)
class GridQuestions:
    """A grid's runs as its questions see them: each setting's run keys in seed order, and the groups
    of settings that each ask which lr is best (one group, without `across`, when lr is not varied
    with other settings)."""
    name: str
    settings: dict                    # setting (a hashable label) -> its keys, seed 1 first
    groups: dict                      # group label -> its settings
    across: bool                      # the groups' leaders are compared too


@dataclass
class Allocation:
    wanted: set = field(default_factory=set)        # keys to train (or trained) by the rule so far
    complete: bool = True                           # no finished result can make it want more
    questions: list = field(default_factory=list)   # (grid, group, Look) of each question's last look


def allocate(rule: AdaptiveSeeds, grids: Iterable[GridQuestions], finished: Mapping[str, float]) -> Allocation:
    """The runs the rule wants, given the finished runs' values (key -> value; NaN for a run that
    finished without one, e.g. diverged). Runs not finished are absent from `finished`."""
    allocation = Allocation()
    for grid in grids:
        _replay(rule, grid, finished, allocation)
    return allocation


def _replay(rule: AdaptiveSeeds, grid: GridQuestions, finished: Mapping[str, float], allocation: Allocation) -> None:
    have = {s: 0 for s in grid.settings}
    active = set(grid.settings)
    looks: dict = {}
    n = rule.min
    for n in range(rule.min, rule.max + 1):
        for s in active:
            have[s] = n
        need = [k for s, keys in grid.settings.items() for k in keys[:have[s]]]
        allocation.wanted.update(need)
        if any(k not in finished for k in need):  # a run not finished (or failed) holds the grid at this level
            allocation.complete = False
            looks = {g: Look(q.leader, q.open, "waiting", q.n, q.p_holm) for g, q in looks.items()} or \
                {g: Look(None, (), "waiting", n) for g in [*grid.groups, *([""] if grid.across else [])]}
            break
        values = {s: [finished[k] for k in keys[:have[s]]] for s, keys in grid.settings.items()}
        active = set()
        for group, members in grid.groups.items():
            looks[group] = look({s: values[s] for s in members}, rule, max(have[s] for s in members))
        if grid.across:
            leaders = [q.leader for g, q in looks.items() if g and q.leader is not None]
            if len(leaders) > 1:
                looks[""] = look({s: values[s] for s in leaders}, rule, max(have[s] for s in leaders))
            else:
                looks.pop("", None)
        for q in looks.values():
            if q.state == "open" and q.leader is not None:
                active.update((q.leader, *q.open))
        if not active:
            break
    allocation.questions.extend((grid.name, group, q) for group, q in looks.items())


def grid_questions(spec: SweepSpec, grid_names: Iterable[str]) -> list[GridQuestions]:
    """The questions of each named grid that takes the sweep's seeds (a grid with its own `seed`
    list keeps it)."""
    questions = []
    for name in grid_names:
        grid = spec.grids[name]
        if "seed" in grid:
            continue
        varied = [s for s, values in grid.items() if len(values) > 1]
        settings: dict = {}
        for run in sorted(expand(spec, [name]), key=lambda r: r.config.seed):
            setting = tuple((s, getattr(run.config, s)) for s in varied)
            settings.setdefault(setting, []).append(run.key)
        by = [s for s in varied if s != "lr"]
        across = "lr" in varied and bool(by)
        groups: dict = {}
        for setting in settings:
            group = ", ".join(f"{s}={v:g}" if isinstance(v, float) else f"{s}={v}" for s, v in setting if s in by) \
                if across else ""
            groups.setdefault(group, []).append(setting)
        questions.append(GridQuestions(name, settings, groups, across))
    return questions
