"""Searches and early stopping in the sweep file: what a valid one parses into."""
import math
import warnings

import optuna
import pytest

from mnist_core import RunConfig
from sweep.spec import (
    EarlyStop,
    Param,
    SearchSpec,
    SpecError,
    count_runs,
    describe_search,
    expand,
    parse_spec,
    select,
    trial_config,
)

SPEC = """
experiment: e
defaults: {epochs: 3}
seeds: [1, 2]
early_stop: {type: asha, min_epochs: 2}
grids:
  depth: {depth: [1, 2, 3]}
  width: {width: [25, 50], early_stop: {type: median}}
searches:
  lr_width:
    method: tpe
    trials: 30
    seed: 1
    space:
      activation: [relu, tanh]
      lr: {distribution: log_uniform_values, min: 0.001, max: 1.0}
      width: {distribution: int_uniform, min: 16, max: 256}
    early_stop: {type: median}
  everything:
    method: random
    trials: 7
    space:
      activation: {values: [relu, sigmoid]}
      schedule: {distribution: categorical, values: [fixed, cosine]}
      momentum: {distribution: q_uniform, min: 0.1, max: 0.9, q: 0.2}
      gamma: {distribution: inv_log_uniform_values, min: 0.25, max: 1}
      lr: {distribution: log_uniform, min: -7, max: 0}
      test_batch_size: {distribution: constant, value: 500}
      restart_period: {value: 3}
      epochs: 4
      depth: {distribution: q_log_uniform_values, min: 1, max: 8}
      width: {distribution: q_uniform, min: 10, max: 100, q: 10}
      batch_size: {min: 32, max: 128}
      seed: {distribution: int_uniform, min: 0, max: 9}
  float_ranges:
    method: tpe
    trials: 3
    space:
      lr: {min: 1e-3, max: 0.5}
      momentum: {distribution: uniform, min: 0, max: 0.5}
      gamma: {distribution: inv_log_uniform, min: 0, max: 2}
      depth: {distribution: q_log_uniform_values, min: 2, max: 4, q: 1}
"""


@pytest.fixture(scope="module")
def spec():
    return parse_spec(SPEC, "s.yaml")


def test_searches_parse_into_frozen_dataclasses(spec):
    search = spec.searches["lr_width"]
    assert search == SearchSpec(name="lr_width", method="tpe", trials=30, seed=1, space={
        "activation": Param("categorical", choices=("relu", "tanh"), distribution="categorical"),
        "lr": Param("float", low=0.001, high=1.0, log=True, distribution="log_uniform_values"),
        "width": Param("int", low=16, high=256, distribution="int_uniform"),
    }, early_stop=EarlyStop("median", min_epochs=1, reduction_factor=3))
    with pytest.raises(AttributeError):
        search.trials = 3
    assert spec.searches["everything"].seed == 0  # the sampler's seed defaults to 0


def test_every_distribution(spec):
    space = spec.searches["everything"].space
    assert space["activation"] == Param("categorical", choices=("relu", "sigmoid"), distribution="categorical")
    assert space["schedule"] == Param("categorical", choices=("fixed", "cosine"), distribution="categorical")
    assert space["momentum"] == Param("float", low=0.1, high=0.9, step=0.2, distribution="q_uniform")
    assert space["gamma"] == Param("float", low=0.25, high=1.0, log=True, distribution="inv_log_uniform_values")
    lr = space["lr"]
    assert (lr.kind, lr.log, lr.high, lr.distribution) == ("float", True, 1.0, "log_uniform")
    assert lr.low == pytest.approx(math.exp(-7))
    assert space["test_batch_size"] == Param("constant", choices=(500,), distribution="constant")
    assert space["restart_period"] == Param("constant", choices=(3,), distribution="constant")
    assert space["epochs"] == Param("constant", choices=(4,), distribution="constant")
    assert space["depth"] == Param("int", low=1, high=8, log=True, distribution="q_log_uniform_values")
    assert space["width"] == Param("int", low=10, high=100, step=10, distribution="q_uniform")
    assert space["batch_size"] == Param("int", low=32, high=128, distribution="int_uniform")  # inferred from ints
    assert space["seed"] == Param("int", low=0, high=9, distribution="int_uniform")
    floats = spec.searches["float_ranges"].space
    assert floats["lr"] == Param("float", low=0.001, high=0.5, distribution="uniform")  # 1e-3 is read as a number
    assert floats["momentum"] == Param("float", low=0.0, high=0.5, distribution="uniform")
    assert floats["gamma"].low == pytest.approx(math.exp(-2)) and floats["gamma"].high == 1.0
    assert floats["depth"] == Param("int", low=2, high=4, log=True, distribution="q_log_uniform_values")


def test_int_uniform_on_a_float_setting_steps_by_one():
    spec = parse_spec("experiment: e\nsearches:\n  s: {method: random, trials: 2, "
                      "space: {lr: {distribution: int_uniform, min: 1, max: 3}}}\n")
    assert spec.searches["s"].space["lr"] == Param("float", low=1.0, high=3.0, step=1.0, distribution="int_uniform")


def _as_optuna(param: Param):
    """What the lead's runtime builds; here only to prove every Param is a valid Optuna distribution."""
    if param.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(param.choices)
    if param.kind == "float":
        return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return optuna.distributions.IntDistribution(param.low, param.high, log=param.log, step=param.step or 1)


def test_every_sampled_value_is_a_valid_setting(spec):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for search in spec.searches.values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Optuna warns when it has to move a bound: never here
            space = {k: _as_optuna(p) for k, p in search.space.items() if p.kind != "constant"}
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=search.seed))
        for _ in range(20):
            trial = study.ask(space)
            config = trial_config(spec, search, trial.params)  # RunConfig checks every value
            assert isinstance(config, RunConfig)
            study.tell(trial, 0.0)
    config = trial_config(spec, spec.searches["everything"], {"lr": 0.01})
    assert (config.epochs, config.test_batch_size, config.restart_period, config.lr) == (4, 500, 3, 0.01)
    assert trial_config(spec, spec.searches["lr_width"], {}).epochs == 3  # the rest from defaults


def test_describe_search_in_the_files_words(spec):
    assert describe_search(spec.searches["lr_width"]) == [
        "search 'lr_width': tpe, 30 trials, sampler seed 1",
        "  activation: one of relu, tanh",
        "  lr: log-uniform 0.001 .. 1",
        "  width: integers 16 .. 256",
        "  early stop: median (a run worse than the median of the earlier runs at the same epoch stops), "
        "never before 1 epoch",
    ]
    lines = describe_search(spec.searches["everything"])
    assert "  momentum: uniform 0.1 .. 0.9 in steps of 0.2" in lines
    assert "  width: integers 10 .. 100 in steps of 10" in lines
    assert "  depth: log-uniform integers 1 .. 8" in lines
    assert "  test_batch_size: fixed at 500" in lines
    assert lines[-1] == ("  early stop: asha (about 1 run in 3 goes on at each rung), never before 2 epochs")


def test_early_stop_for_the_own_one_wins(spec):
    asha = EarlyStop("asha", min_epochs=2, reduction_factor=3)
    assert spec.early_stop == asha
    assert spec.early_stop_for("depth") == asha
    assert spec.early_stop_for("width") == EarlyStop("median")
    assert spec.early_stop_for("lr_width") == EarlyStop("median")
    assert spec.early_stop_for("everything") == asha
    none = parse_spec("experiment: e\ngrids:\n  g: {lr: [0.1]}\n")
    assert none.early_stop is None and none.early_stop_for("g") is None
    with pytest.raises(SpecError, match="no grid named 'h'"):
        none.early_stop_for("h")


def test_select_names_grids_and_searches(spec):
    assert select(spec) == (("depth", "width"), ("lr_width", "everything", "float_ranges"))
    assert select(spec, ["everything", "width"]) == (("width",), ("everything",))
    with pytest.raises(SpecError, match=r"^s\.yaml: no grid or search named 'lr_widht' \(did you mean 'lr_width'\?\); "
                                        r"grids: depth, width; searches: lr_width, everything, float_ranges$"):
        select(spec, ["lr_widht"])


def test_expand_gives_the_grid_runs_only(spec):
    runs = expand(spec)
    assert len(runs) == (3 + 2 - 1) * 2  # the reference run (depth 2, width 50) is in both grids, 2 seeds
    assert expand(spec, ["lr_width"]) == []
    assert [r.key for r in expand(spec, ["lr_width", "depth"])] == [r.key for r in expand(spec, ["depth"])]
    assert count_runs(spec) == 3 * 2 + 2 * 2 + 30 + 7 + 3  # an upper bound: shared runs counted twice
    assert count_runs(spec, ["width"]) == 4


def test_a_file_of_searches_only_needs_no_grids():
    spec = parse_spec("experiment: e\nsearches:\n  s: {method: random, trials: 2, space: {lr: [0.1, 0.2]}}\n")
    assert spec.grids == {} and expand(spec) == [] and list(spec.searches) == ["s"]
