"""Adaptive seeds: the rule on known numbers, its false-decision rate over simulated questions with
known true means, and a sweep that gives seeds by it, run here."""
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from sweep import queue
from sweep.adaptive import seeds
from sweep.adaptive.seeds import GridQuestions, allocate, alpha_at, look
from sweep.adaptive.wanted import WantedRuns
from sweep.cli import main
from sweep.execute import Settings, Sweep
from sweep.spec import AdaptiveSeeds, expand, load_spec, parse_spec
from sweep.tracking.location import open_store
from sweep.tracking.mlflow_store import MlflowStore

from conftest import assert_each_key_finished_once, training_runs, write_spec

RULE = AdaptiveSeeds(min=2, max=10)


def test_the_looks_spend_alpha_once_most_of_it_at_the_last():
    spent = sum(alpha_at(RULE, n) for n in range(RULE.min, RULE.max + 1))
    assert spent == pytest.approx(0.05)
    assert alpha_at(RULE, RULE.max) > 0.5 * 0.05 > alpha_at(RULE, RULE.min)
    assert alpha_at(AdaptiveSeeds(3, 3), 3) == 0.05


def test_a_far_rival_is_out_a_close_one_stays_open_and_a_hopeless_question_is_spared():
    rng = np.random.default_rng(0)
    far = look({"a": rng.normal(2, 0.1, 5), "b": rng.normal(9, 0.1, 5)}, RULE, 5)
    assert far.state == "decided" and far.leader == "a" and far.open == ()
    close = look({"a": [2.0, 2.4, 2.2], "b": [2.5, 2.9, 2.7], "c": [9.0, 9.1, 9.05]}, RULE, 3)
    assert close.state == "open" and close.leader == "a" and close.open == ("b",)
    twins = look({"a": [2.0, 2.4, 2.2, 2.1], "b": [2.3, 1.9, 2.2, 2.2]}, RULE, 4)
    assert twins.state == "spared" and len(twins.open) == 1
    assert look({"a": [2.0, 2.4], "b": [2.3, 1.9]}, RULE, 2).state == "open"  # never spared at the first look
    last = look({"a": [2.0, 2.4, 2.2], "b": [2.3, 2.6, 2.1]}, AdaptiveSeeds(2, 3), 3)
    assert last.state == "undecided"


def test_a_setting_whose_seeds_diverged_is_out_of_contention():
    q = look({"a": [2.0, 2.4, 2.2], "b": [math.nan, math.nan, 1.0]}, RULE, 3)
    assert q.leader == "a" and q.state == "decided"


def _question(k):
    settings = {s: [f"{s}/{i}" for i in RULE.seeds] for s in range(k)}
    return GridQuestions("g", settings, {"": list(settings)}, False), settings


@pytest.mark.parametrize("means", [(0, 0), (0, 0, 0, 0), (0, 0, 3, 3), (0, 0, 1, 1), (0, 0, 0, 1.5, 1.5, 1.5)],
                         ids=["two-equal", "four-equal", "twins-far", "twins-near", "triplets-near"])
def test_a_question_is_called_decided_falsely_at_most_alpha_of_the_time(means):
    """With another setting as good as the leader, any decision is false; whichever look makes it."""
    grid, settings = _question(len(means))
    rng = np.random.default_rng(len(means))
    false, questions = 0, 1000
    for _ in range(questions):
        values = rng.normal(means, 1.0, size=(RULE.max, len(means)))
        finished = {key: values[i, s] for s, keys in settings.items() for i, key in enumerate(keys)}
        (_, _, q), = allocate(RULE, [grid], finished).questions
        false += q.state == "decided"
    assert false / questions <= 0.05


def test_seeds_go_only_where_a_question_is_open_and_the_rule_waits_for_unfinished_runs():
    grid, settings = _question(3)
    means = {0: 2.0, 1: 2.6, 2: 9.0}
    rng = np.random.default_rng(3)
    values = {key: rng.normal(means[s], 0.3) for s, keys in settings.items() for key in keys}
    first = allocate(RULE, [grid], {})
    assert first.wanted == {k for keys in settings.values() for k in keys[:2]} and not first.complete
    finished = {}
    while True:  # train what it wants, round after round, as a sweep does
        allocation = allocate(RULE, [grid], finished)
        todo = allocation.wanted - set(finished)
        if not todo:
            break
        finished.update({key: values[key] for key in todo})
    assert allocation.complete
    counts = {s: sum(k in allocation.wanted for k in keys) for s, keys in settings.items()}
    assert counts[2] < counts[0] == counts[1] and counts[2] >= RULE.min
    for s, keys in settings.items():  # seeds 1..n of each setting, none skipped
        assert [k in allocation.wanted for k in keys] == sorted((k in allocation.wanted for k in keys), reverse=True)


def test_adaptive_seeds_in_a_sweep_file():
    spec = parse_spec("experiment: x\nseeds: {min: 2, max: 5}\ngrids: {g: {lr: [0.1, 0.3], activation: [relu, tanh]}}")
    assert spec.adaptive == AdaptiveSeeds(2, 5) and spec.seeds == (1, 2, 3, 4, 5) and len(expand(spec)) == 20
    (grid,) = seeds.grid_questions(spec, ["g"])
    assert grid.across and sorted(grid.groups) == ["activation=relu", "activation=tanh"]
    assert all(len(keys) == 5 for keys in grid.settings.values())


SPEC = """
experiment: tiny
defaults: {epochs: 1}
seeds: {min: 2, max: 4}
grids:
  g: {lr: [0.003, 0.1], activation: [relu, tanh]}
"""


class Here:
    def round(self, jobs, n_jobs):
        from sweep.execute.worker import execute

        return Ran(outcome for job in jobs for outcome in execute(job))


class Ran(list):
    crash = None


def test_a_sweep_with_adaptive_seeds_trains_what_the_rule_wants_once_and_ends(env, pinned_threads):
    spec = load_spec(write_spec(env, SPEC))
    uri = open_store(os.environ["MLFLOW_TRACKING_URI"])
    summary = Sweep(spec, MlflowStore(uri), Settings(jobs=2), pool=Here()).run()
    store = MlflowStore(uri)
    wanted = WantedRuns(spec, store, summary.experiment_id)
    allocation = wanted.read(sync=True)
    universe = {r.key for r in expand(spec)}
    assert allocation.complete and summary.exit_code == 0
    assert summary.count("done") + summary.count("diverged") == len(allocation.wanted) >= 8
    assert summary.spared == len(universe - allocation.wanted)
    assert_each_key_finished_once(training_runs(), allocation.wanted)
    assert queue.find_parent(store, summary.experiment_id, spec.name).status == "FINISHED"
    again = Sweep(spec, MlflowStore(uri), Settings(jobs=2), pool=Here()).run()
    assert again.to_train == 0 and again.spared == summary.spared
    status = CliRunner().invoke(main, ["status", spec.path])
    assert status.exit_code == 0 and f"up to {len(universe)} runs:" in status.output
    assert f"{len(allocation.wanted)} done" in status.output and "0 pending" in status.output
    assert (f"{summary.spared} spared" in status.output) == (summary.spared > 0)


@pytest.mark.parametrize("seeds, says", [
    ("{min: 1, max: 4}", "key 'min', value 1: min must be an integer >= 2"),
    ("{min: 3, max: 2}", "key 'max', value 2: max must be an integer >= 3"),
    ("{mn: 2, max: 4}", "unknown key 'mn' (did you mean 'min'?)"),
    ("{min: 2}", "missing 'max'"),
    ("{max: 4, until: always}", "key 'until', value 'always'"),
    ("{max: 101}", "at most 100 seeds"),
])
def test_bad_adaptive_seeds_are_one_message_naming_the_key(seeds, says):
    with pytest.raises(ValueError, match="^f.yaml: seeds") as found:
        parse_spec(f"experiment: x\nseeds: {seeds}\ngrids: {{g: {{lr: [0.1, 0.3]}}}}", "f.yaml")
    assert says in str(found.value) and "\n" not in str(found.value)


class Valued:
    """A pool that 'trains' each run at once to a chosen final error (NaN: it diverged)."""

    def __init__(self, error):
        self.error, self.trained = error, []

    def round(self, jobs, n_jobs):
        from sweep.execute.worker import Trained, execute

        def agent(folder):
            path = folder / "mnist_agent.pt"
            path.write_bytes(b"placeholder")
            return path

        def train(job, leases, planned_of, judge):
            configs = [planned_of[lease.run_id].config for lease in leases]
            self.trained += configs
            return [Trained({} if math.isnan(e) else {"test_error": e}, 1, math.isnan(e), e, 0.1, agent)
                    for e in map(self.error, configs)]
        return Ran(outcome for job in jobs for outcome in execute(job, train=train))


def _store(tmp_path):
    from sweep.queue import MemoryStore

    return MemoryStore(tmp_path / "index.sqlite")


def test_a_grid_with_its_own_seeds_trains_them_all_though_an_adaptive_grid_shares_its_runs(tmp_path):
    spec = parse_spec("experiment: x\nseeds: {min: 2, max: 4}\n"
                      "grids: {a: {lr: [0.1, 0.3]}, fixed: {lr: [0.1], seed: [1, 2, 3, 4]}}", "t.yaml")
    pool = Valued(lambda c: {0.1: 0.01, 0.3: 0.05}[c.lr] + 0.0001 * c.seed)
    summary = Sweep(spec, _store(tmp_path), Settings(jobs=1), pool=pool).run()
    trained = sorted((c.lr, c.seed) for c in pool.trained)
    assert trained == [(0.1, 1), (0.1, 2), (0.1, 3), (0.1, 4), (0.3, 1), (0.3, 2)]  # lr 0.3 decided out at n = 2
    assert summary.exit_code == 0 and summary.spared == 2


def test_runs_done_under_fixed_seeds_are_done_never_spared_when_the_file_turns_adaptive(tmp_path):
    store = _store(tmp_path)
    pool = Valued(lambda c: {0.1: 0.01, 0.3: 0.05}[c.lr] + 0.0001 * c.seed)
    fixed = parse_spec("experiment: x\nseeds: [1, 2, 3, 4]\ngrids: {a: {lr: [0.1, 0.3]}}", "t.yaml")
    Sweep(fixed, store, Settings(jobs=1), pool=pool).run()
    adaptive = parse_spec("experiment: x\nseeds: {min: 2, max: 4}\ngrids: {a: {lr: [0.1, 0.3]}}", "t.yaml")
    again = Sweep(adaptive, store, Settings(jobs=1), pool=pool).run()
    assert again.already_done == 8 and again.to_train == 0 and again.spared == 0
    wanted = WantedRuns(adaptive, store, again.experiment_id)
    wanted.read(sync=True)
    keys = [r.key for r in expand(adaptive)]
    assert wanted.spared(keys) == [] and wanted.later(keys) == []
