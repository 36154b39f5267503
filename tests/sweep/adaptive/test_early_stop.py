"""The early-stopping judge on peers given as the store would hold them (no store, no training)."""
import pytest

import sweep.adaptive.early_stop as early_stop
from mnist_core import RunConfig
from sweep.adaptive.early_stop import Judge, Peer, Rule
from sweep.spec.space import EarlyStop

MEDIAN = EarlyStop(type="median", min_epochs=1)


def peers(curves):
    return [Peer(f"peer{i}", i, "FINISHED", False, tuple(curve)) for i, curve in enumerate(curves)]


@pytest.fixture
def judge(monkeypatch):
    """A judge of one run of grid 'g' whose 6 peers in the store did far better at every epoch."""
    monkeypatch.setattr(early_stop, "read_peers", lambda *args: peers([[0.1, 0.05, 0.03]] * 6))
    rule = Rule((("grid", "g", MEDIAN),))
    return Judge("sqlite:///unused", "0", {"mine": (frozenset({("grid", "g")}), rule)},
                 {"mine": RunConfig(epochs=3)})


def test_a_run_far_behind_its_peers_stops_before_its_last_epoch(judge):
    judge.record("mine", 0.9)
    judge.record("mine", 0.8)
    assert judge.stops(2, ["mine"]) == {"mine"} and judge.stopped == {"mine"}


def test_a_run_that_trained_all_its_epochs_is_never_stopped(judge):
    for epoch, value in enumerate([0.9, 0.8, 0.7], 1):
        judge.record("mine", value)
    assert judge.stops(3, ["mine"]) == set() and not judge.stopped  # its result stays a result
