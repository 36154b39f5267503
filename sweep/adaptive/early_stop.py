"""Early stopping: after each epoch, does a run go on? Optuna's pruning rules decide, judged on the
metric `sweep best` ranks by, against the other runs of the same grid or search that reached that
epoch, as the store holds them.

Each decision rebuilds an in-memory Optuna study from scratch: the other runs' per-epoch values
(their curve tag) are replayed through the pruner in the order the runs started, so that
it records what it records as runs go (successive halving's rungs), then the run in question. Nothing
is kept between decisions: any process, resumed or not, judges the same way from the store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from ..queue import Query, Store, schema
from ..spec.space import EarlyStop


@dataclass(frozen=True)
class Rule:
    """How one run may be stopped: in each of its grids (or its search), by that one's own rule."""
    judges: tuple            # ((kind "grid" | "search", name, EarlyStop), ...); stopped only when all say so

    def __bool__(self) -> bool:
        return bool(self.judges)


def groups_of(grids: Iterable[str] = (), search: str = "") -> frozenset:
    """The grids or search a run is judged within (its peers are their runs)."""
    return frozenset({("search", search)} if search else {("grid", g) for g in grids})


def rule_for(spec, grids: Iterable[str] = (), search: str = "") -> Rule:
    """A grid run stops early only when every grid it belongs to stops runs early (a run that one
    grid needs to the end is trained to the end); a search's trial by its search's rule."""
    if search:
        stop = spec.early_stop_for(search)
        return Rule((("search", search, stop),) if stop else ())
    judges = tuple(("grid", g, spec.early_stop_for(g)) for g in grids)
    return Rule(judges if judges and all(j[2] for j in judges) else ())


def pruner(stop: EarlyStop):
    import optuna

    if stop.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=stop.min_epochs,
                                                      reduction_factor=stop.reduction_factor)
    return optuna.pruners.MedianPruner(n_warmup_steps=stop.min_epochs)


@dataclass(frozen=True)
class Peer:
    """Another run of the same grid or search, as the store holds it."""
    run_id: str
    start_time: int
    status: str              # FINISHED, RUNNING, ...
    stopped: bool            # stopped early
    curve: tuple             # the objective after each epoch (1, 2, ...)
    params: dict = None      # its settings, as logged (strings)


def read_peers(store: Store, experiment_id: str, kind: str, name: str) -> list[Peer]:
    """The runs of a grid or a search, with their curves: one request."""
    if kind == "search":
        query = Query(tags=((schema.SEARCH, name),))
    else:  # a run's grids are one comma-joined tag: narrow in the store, then match the name exactly
        query = Query(tags=((schema.KIND, schema.TRAIN),), tags_like=((schema.GRIDS, name),))
    peers = []
    for row in store.find(experiment_id, query):
        run = schema.decode(row)
        if (kind == "search" or name in run.grids) and run.status in ("FINISHED", "RUNNING") and not run.duplicate_of:
            peers.append(Peer(run.run_id, run.start_time, run.status, run.stopped, run.curve, row.params))
    return peers


def same_values(config, params: dict, by: tuple) -> bool:
    """Whether logged `params` hold `config`'s values of the settings `by`."""
    return all(schema.setting_column(b, [params.get(b)])[0] == getattr(config, b) for b in by)


def should_stop(stop: EarlyStop, peers: Iterable[Peer], others: Iterable[tuple], curve: tuple) -> bool:
    """Whether a run whose objective so far is `curve` stops now, by `stop`'s pruning rule, against
    `peers` (from the store) and `others` (curves of runs training beside it, as far as they got)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=pruner(stop),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for peer in sorted(peers, key=lambda p: p.start_time):
        state = None if peer.status == "RUNNING" else "stopped" if peer.stopped else "done"
        _replay(study, peer.curve, state)
    for other in others:
        _replay(study, other, None)
    return _replay(study, curve, None)


def _replay(study, curve: tuple, state: Optional[str]) -> bool:
    """A trial reporting `curve` step by step (the pruner sees each step, as it would have live);
    returns the pruner's verdict at the last step."""
    import optuna

    trial = study.ask()
    verdict = False
    for step, value in enumerate(curve, 1):
        value = float(value) if value is not None and math.isfinite(value) else float("nan")
        trial.report(value, step)
        verdict = trial.should_prune()
    if state == "done" and curve and math.isfinite(curve[-1]):
        study.tell(trial, float(curve[-1]))
    elif state is not None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return verdict


class Judge:
    """Decides for the runs of one job, epoch by epoch; reads each grid's or search's peers once per
    epoch (one request each). `members`: run_id -> (the grids/search it belongs to, its Rule);
    `configs`: run_id -> its RunConfig (for a rule's `by`)."""

    def __init__(self, store: Store, experiment_id: str, members: dict, configs: Optional[dict] = None):
        self.store, self.experiment_id, self.members, self.configs = store, experiment_id, members, configs or {}
        self._peers: dict = {}                # (kind, name, epoch) -> peers
        self.curves: dict = {}                # run_id -> objective values so far
        self.stopped: set = set()             # runs it stopped

    def record(self, run_id: str, value: float) -> tuple:
        """Note a run's objective after its latest epoch; returns its curve so far."""
        curve = self.curves.setdefault(run_id, [])
        curve.append(value)
        return tuple(curve)

    def stops(self, epoch: int, run_ids: Iterable[str]) -> set:
        """Of `run_ids` (training together, each with its curve up to `epoch` recorded), those that stop."""
        run_ids = list(run_ids)
        stopping = set()
        for run_id in run_ids:
            _, rule = self.members[run_id]
            mine = self.configs.get(run_id)
            if not rule or epoch < max(stop.min_epochs for _, _, stop in rule.judges):
                continue
            if mine is not None and epoch >= mine.epochs:
                continue  # trained to its end: stopping it now would save nothing and hide its result
            verdicts = []
            for kind, name, stop in rule.judges:
                together = [tuple(self.curves[r]) for r in run_ids
                            if r != run_id and (kind, name) in self.members[r][0]
                            and (not stop.by or all(getattr(mine, b) == getattr(self.configs[r], b) for b in stop.by))]
                peers = [p for p in self._read(kind, name, epoch) if p.run_id not in run_ids
                         and (not stop.by or same_values(mine, p.params or {}, stop.by))]
                verdicts.append(should_stop(stop, peers, together, tuple(self.curves[run_id])))
            if all(verdicts):
                stopping.add(run_id)
        self.stopped |= stopping
        return stopping

    def _read(self, kind: str, name: str, epoch: int) -> list[Peer]:
        if (kind, name, epoch) not in self._peers:
            self._peers = {k: v for k, v in self._peers.items() if k[2] == epoch}
            self._peers[(kind, name, epoch)] = read_peers(self.store, self.experiment_id, kind, name)
        return self._peers[(kind, name, epoch)]
