import re

import pytest

from mnist_core import RunConfig
from sweep.spec import SpecError, expand, parse_spec, run_key, run_name


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


GOOD = """
experiment: mnist-mlp
defaults: {epochs: 10, batch_size: 64}
grids:
  lr_by_activation:
    activation: [relu, tanh, sigmoid, leaky_relu]
    lr: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
  depth: {depth: [1, 2, 3, 4, 5]}
  width: {width: [10, 25, 50, 100, 200, 400]}
"""


def test_grids_union_with_shared_reference_run_trained_once():
    runs = expand(parse_spec(GOOD, "sweeps.yaml"))
    assert len(runs) == 28 + 5 + 6 - 2  # the reference run is in all three grids
    ref = [r for r in runs if r.config == RunConfig()]
    assert len(ref) == 1
    assert ref[0].grids == ("lr_by_activation", "depth", "width")
    assert ref[0].name == "relu-lr0.03-d2-w50"
    assert len({r.key for r in runs}) == len(runs)


def test_grid_filter_and_scalars_and_seeds():
    spec = parse_spec(GOOD.replace("defaults: {epochs: 10, batch_size: 64}",
                                   "defaults: {epochs: 3}\nseeds: [1, 2]"), "s.yaml")
    runs = expand(spec, ["depth"])
    assert len(runs) == 10 and {r.config.seed for r in runs} == {1, 2}
    assert all(r.config.epochs == 3 for r in runs)
    assert {r.name for r in runs if r.config.depth == 4} == {"relu-lr0.03-d4-w50-e3", "relu-lr0.03-d4-w50-e3-s2"}
    with pytest.raises(SpecError, match="no grid named 'dept'.*did you mean 'depth'"):
        expand(spec, ["dept"])


def test_key_is_stable_and_depends_on_every_setting():
    assert run_key(RunConfig()) == run_key(RunConfig(lr=0.03))
    assert run_key(RunConfig()) != run_key(RunConfig(seed=2))
    assert len(run_key(RunConfig())) == 16 and int(run_key(RunConfig()), 16) >= 0
    assert run_name(RunConfig(schedule="cosine", momentum=0.9)) == "relu-lr0.03-d2-w50-cosine-m0.9"


def test_yaml_scientific_notation_is_a_number():
    spec = parse_spec("experiment: e\ngrids:\n  g: {lr: [1e-3, 0.1]}\n")
    assert [r.config.lr for r in expand(spec)] == [0.001, 0.1]


BAD = [
    ("experiment: e\ngrids:\n  g: {lr: [0.1\n", r"s\.yaml: YAML syntax error at line \d+"),
    ("grids:\n  g: {lr: [0.1]}\n", r"s\.yaml: missing 'experiment'"),
    ("experiment: e\n", r"s\.yaml: missing 'grids'"),
    ("experiment: e\ngrids:\n  g: {lr: [0.1]}\ndefualts: {}\n", r"unknown top-level key 'defualts' \(did you mean 'defaults'\?\)"),
    ("experiment: e\ngrids:\n  g: {activaton: [relu]}\n", r"grid 'g': unknown setting 'activaton' \(did you mean 'activation'\?\)"),
    ("experiment: e\ngrids:\n  g: {lr: [0.1, 0]}\n", r"grid 'g', key 'lr', value 0: lr must be > 0"),
    ("experiment: e\ngrids:\n  g: {depth: [0]}\n", r"grid 'g', key 'depth', value 0: depth must be >= 1"),
    ("experiment: e\ngrids:\n  g: {activation: [relu, swish]}\n", r"grid 'g', key 'activation', value 'swish': unknown activation"),
    ("experiment: e\ngrids:\n  g: {schedule: [step]}\n", r"grid 'g', key 'schedule', value 'step': unknown schedule"),
    ("experiment: e\ngrids:\n  g: {width: [50.5]}\n", r"grid 'g', key 'width', value 50.5: width must be an integer"),
    ("experiment: e\ngrids:\n  g: {lr: []}\n", r"grid 'g', key 'lr': empty list"),
    ("experiment: e\ngrids:\n  g: {}\n", r"grid 'g': empty grid"),
    ("experiment: e\ngrids:\n  g: [1, 2]\n", r"grid 'g' must be a mapping"),
    ("experiment: e\ndefaults: {epochs: [1, 2]}\ngrids:\n  g: {lr: [0.1]}\n", r"defaults, key 'epochs': a default is one value"),
    ("experiment: e\ndefaults: {lr: fast}\ngrids:\n  g: {depth: 1}\n", r"defaults, key 'lr', value 'fast': lr must be a number"),
    ("experiment: e\nseeds: []\ngrids:\n  g: {depth: 1}\n", r"seeds, key 'seed': empty list"),
    ("experiment: [a]\ngrids:\n  g: {depth: 1}\n", r"'experiment' must be a string"),
    ("- just a list\n", r"expected a mapping"),
    # what a sweep file never needs: aliases, merge keys, repeated keys, unreadable values
    ("experiment: e\ndefaults: &d {epochs: 2}\ngrids:\n  g: *d\n",
     exact("s.yaml: the value at line 2 is used again through a YAML alias; anchors and aliases (&name, *name) "
           "are not allowed in a sweep file: write each value out")),
    ("experiment: e\ngrids: &g\n  g: *g\n", r"^s\.yaml: the value at line 2 is used again through a YAML alias"),
    ("experiment: e\ngrids:\n  g:\n    <<: {lr: [0.1]}\n",
     exact("s.yaml: merge key '<<' at line 4: merge keys are not allowed in a sweep file; write each value out")),
    ("experiment: e\ngrids:\n  g: {lr: [0.1]}\n  g: {lr: [0.2]}\n",
     exact("s.yaml: duplicate key 'g' at line 4 (first at line 3); give each key once")),
    ("experiment: e\ngrids:\n  g:\n    lr: [0.1]\n    lr: [0.2]\n",
     exact("s.yaml: duplicate key 'lr' at line 5 (first at line 4); give each key once")),
    ("experiment: e\ngrids:\n  g: {lr: [0.1], lr: 0.2}\n",
     exact("s.yaml: duplicate key 'lr' at line 3 (first at line 3); give each key once")),
    ("experiment: e\nexperiment: f\ngrids:\n  g: {lr: [0.1]}\n",
     exact("s.yaml: duplicate key 'experiment' at line 2 (first at line 1); give each key once")),
    ("experiment: e\nsearches:\n  s:\n    method: tpe\n    trials: 2\n    space: {lr: [0.1, 0.2]}\n    trials: 3\n",
     exact("s.yaml: duplicate key 'trials' at line 7 (first at line 5); give each key once")),
    ("experiment: e\ngrids:\n  g: {? [a]: 1}\n", exact("s.yaml: the key at line 3 is a list; a key is a plain name")),
    ("experiment: e\ngrids:\n  g: {width: [" + "9" * 5000 + "]}\n",
     exact("s.yaml: cannot read the value at line 3: Exceeds the limit (4300 digits) for integer string conversion: "
           "value has 5000 digits")),
    ("experiment: e\ngrids:\n  g: {seed: [2001-02-30]}\n",
     exact("s.yaml: cannot read the value at line 3: day is out of range for month")),
    ("experiment: e\ngrids:\n  g: {lr: " + "[" * 5000 + "]" * 5000 + "}\n",
     r"^s\.yaml: YAML syntax error at line 3, column \d+: exceeded maximum nesting depth$"),
    ("experiment: e\ngrids:\n  g: {lr: 0.1}\n\0", exact("s.yaml: not a UTF-8 text file (NUL character at offset 36); "
                                                        "a sweep file is YAML text")),
    ("experiment: e\ngrids:\n  g: {activation: [" + "x" * 100_000 + "]}\n",
     exact("s.yaml: grid 'g', key 'activation', value 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx': "
           "unknown activation 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx'; "
           "choose one of: relu, tanh, sigmoid, leaky_relu")),
    # sweep size, counted from the list lengths
    ("experiment: e\nseeds: [1, 2, 3]\ngrids:\n  g: {lr: [0.1, 0.2], width: [%s], depth: [%s]}\n  h: {depth: 1}\n"
     % (",".join(map(str, range(1, 501))), ",".join(map(str, range(1, 101)))),
     exact("s.yaml: the sweep has up to 300,003 runs (grid 'g': 300,000), over the limit of 100,000; "
           "make it smaller, or allow it with --max-runs 300003")),
    # searches
    ("experiment: e\ngrids: {}\nsearches: {}\n",
     exact("s.yaml: missing 'grids': give at least one grid of settings to sweep, or a search")),
    ("experiment: e\ngrids:\n  s: {lr: [0.1]}\nsearches:\n  s: {method: tpe, trials: 2, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: 's' names both a grid and a search; give them different names")),
    ("experiment: e\nsearches:\n  s: [1]\n",
     exact("s.yaml: search 's' must be a mapping of method, trials, seed, space, early_stop, got list [1]")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2, parameters: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's': unknown key 'parameters' (did you mean 'space'?); "
           "allowed: method, trials, seed, space, early_stop")),
    ("experiment: e\nsearches:\n  s: {trials: 2, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's': missing 'method': random or tpe")),
    ("experiment: e\nsearches:\n  s: {method: tpee, trials: 2, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's', key 'method', value 'tpee': unknown method (did you mean 'tpe'?); choose random or tpe")),
    ("experiment: e\nsearches:\n  s: {method: bayes, trials: 2, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's', key 'method', value 'bayes': unknown method (the Bayesian sampler here is 'tpe'); "
           "choose random or tpe")),
    ("experiment: e\nsearches:\n  s: {method: tpe, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's': missing 'trials': how many runs the search trains")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 0, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's', key 'trials', value 0: trials must be an integer >= 1")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2.5, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's', key 'trials', value 2.5: trials must be an integer >= 1")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2, seed: -1, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: search 's', key 'seed', value -1: seed must be an integer >= 0")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2}\n",
     exact("s.yaml: search 's': missing 'space': the settings to search and their values or ranges")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2, space: {}}\n",
     exact("s.yaml: search 's': empty space; give at least one setting to search")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2, space: [lr]}\n",
     exact("s.yaml: search 's', key 'space' must be a mapping of setting: values or distribution, got list ['lr']")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2, space: {lr: 0.1, width: [10]}}\n",
     exact("s.yaml: search 's': the space fixes every setting; give at least one list or range to search")),
    ("experiment: e\nsearches:\n  s: {method: tpe, trials: 2, space: {lrr: [0.1]}}\n",
     r"^s\.yaml: search 's': unknown setting 'lrr' \(did you mean 'lr'\?\); known settings: activation, "),
    ("experiment: e\ngrids:\n  g: {lr: [0.1, 0.2]}\nsearches:\n  s: {method: tpe, trials: 200000, space: {lr: [0.1, 0.2]}}\n",
     exact("s.yaml: the sweep has up to 200,002 runs (search 's': 200,000), over the limit of 100,000; "
           "make it smaller, or allow it with --max-runs 200002")),
]

SEARCH = "experiment: e\nsearches:\n  s:\n    method: tpe\n    trials: 5\n    space:\n      {}: {}\n"
BAD_PARAMS = [  # (setting, value as written, the reason after "s.yaml: search 's', key K, value V: ")
    ("lr", "{min: 1, max: 0.1}", "min 1 > max 0.1"),
    ("lr", "{distribution: log_uniform_value, min: 0.1, max: 1}",
     "unknown distribution 'log_uniform_value' (did you mean 'log_uniform_values'?); supported: constant, "
     "categorical, uniform, int_uniform, q_uniform, log_uniform_values, q_log_uniform_values, "
     "inv_log_uniform_values, log_uniform, inv_log_uniform"),
    ("lr", "{distribution: [uniform], min: 0.1, max: 1}", "distribution must be a name such as uniform, got ['uniform']"),
    ("lr", "{distribution: normal, mu: 0.1, sigma: 0.01}",
     "distribution 'normal' has no bounded Optuna equivalent; use uniform (min, max)"),
    ("lr", "{distribution: q_normal, mu: 0.1, sigma: 0.01}",
     "distribution 'q_normal' has no bounded Optuna equivalent; use q_uniform (min, max, q)"),
    ("lr", "{distribution: log_normal, mu: 0, sigma: 1}",
     "distribution 'log_normal' has no bounded Optuna equivalent; use log_uniform_values (min, max)"),
    ("lr", "{distribution: q_log_normal, mu: 0, sigma: 1}",
     "distribution 'q_log_normal' has no bounded Optuna equivalent; use log_uniform_values (min, max)"),
    ("lr", "{distribution: q_log_uniform, min: -3, max: 0}",
     "distribution 'q_log_uniform' has no bounded Optuna equivalent; use log_uniform_values (min, max), "
     "or q_log_uniform_values with q: 1 on an integer setting"),
    ("lr", "{distribution: q_log_uniform_values, min: 0.1, max: 1}",
     "Optuna has no stepped log range: q_log_uniform_values is supported with q: 1 on an integer setting only; "
     "use log_uniform_values"),
    ("width", "{distribution: q_log_uniform_values, min: 8, max: 256, q: 8}",
     "Optuna has no stepped log range: q_log_uniform_values is supported with q: 1 on an integer setting only; "
     "use log_uniform_values"),
    ("momentum", "{distribution: log_uniform_values, min: 0, max: 0.5}", "log_uniform_values needs min > 0, got 0"),
    ("momentum", "{distribution: inv_log_uniform_values, min: -1, max: 0.5}",
     "inv_log_uniform_values needs min > 0, got -1"),
    ("lr", "{distribution: q_uniform, min: 0.1, max: 0.5, q: 0}", "q must be a number > 0, got 0"),
    ("lr", "{distribution: q_uniform, min: 0.1, max: 0.5, q: -0.1}", "q must be a number > 0, got -0.1"),
    ("lr", "{distribution: q_uniform, min: 0.1, max: 0.5, q: 0.3}", "max - min (0.4) must be a multiple of q (0.3)"),
    ("width", "{distribution: q_uniform, min: 10, max: 100, q: 2.5}", "q must be an integer > 0, got 2.5"),
    ("width", "{distribution: q_uniform, min: 10, max: 100, q: 7}", "max - min (90) must be a multiple of q (7)"),
    ("width", "{distribution: uniform, min: 16, max: 256}",
     "uniform gives fractional values but width must be an integer; use int_uniform"),
    ("width", "{min: 16, max: 256.5}", "uniform gives fractional values but width must be an integer; use int_uniform"),
    ("width", "{distribution: log_uniform_values, min: 16, max: 256}",
     "log_uniform_values gives fractional values but width must be an integer; use q_log_uniform_values with q: 1"),
    ("width", "{distribution: int_uniform, min: 1.5, max: 20}", "int_uniform needs integer min and max, got 1.5 and 20"),
    ("lr", "{min: 0, max: 1}", "min: lr must be > 0, got 0.0"),
    ("lr", "{distribution: uniform, min: -1, max: 1}", "min: lr must be > 0, got -1.0"),
    ("width", "{min: 0, max: 10}", "min: width must be >= 1, got 0"),
    ("momentum", "{min: 0.0, max: 1.0}", "max: momentum must be in [0, 1), got 1.0"),
    ("gamma", "{distribution: log_uniform_values, min: 0.5, max: 2}", "max: gamma must be in (0, 1], got 2.0"),
    ("activation", "{min: 1, max: 2}",
     "activation is one of relu, tanh, sigmoid, leaky_relu: give a list of them, not a range"),
    ("activation", "[relu, swish]", "unknown activation 'swish'; choose one of: relu, tanh, sigmoid, leaky_relu"),
    ("lr", "{distribution: uniform, min: 0.1, mx: 1}", "unknown key 'mx' (did you mean 'max'?); uniform takes min, max"),
    ("lr", "{distribution: uniform, min: 0.1}", "missing 'max'; uniform takes min, max"),
    ("lr", "{min: fast, max: 1}", "min must be a number, got 'fast'"),
    ("activation", "{values: [relu, tanh], probabilities: [0.5, 0.5]}",
     "probabilities are not supported: Optuna samples the values evenly"),
    ("lr", "{}", "give a list of values, {values: [...]}, {value: x}, or {min: a, max: b} with an optional distribution"),
    ("lr", "[]", "empty list; give at least one value"),
    ("lr", "{values: 0.1}", "values must be a list, got 0.1"),
    ("lr", "{value: 0}", "lr must be > 0, got 0.0"),
    ("lr", "{distribution: log_uniform, min: -7, max: 1000}",
     "log_uniform takes natural logs of the bounds; e^1000 is too large"),
]
EARLY_STOPS = [  # (where in the file, early_stop as written, the message)
    ("top", "{type: ashaa}", "s.yaml: top level, key 'early_stop', value {'type': 'ashaa'}: "
                            "unknown type 'ashaa' (did you mean 'asha'?); choose asha or median"),
    ("top", "{type: hyperband}", "s.yaml: top level, key 'early_stop', value {'type': 'hyperband'}: "
                                "unknown type 'hyperband' (Optuna's successive halving: 'asha'); choose asha or median"),
    ("top", "{type: asha, min_epoch: 2}", "s.yaml: top level, key 'early_stop', value {'min_epoch': 2, 'type': 'asha'}: "
                                         "unknown key 'min_epoch' (did you mean 'min_epochs'?); "
                                         "allowed: type, min_epochs, reduction_factor, by"),
    ("top", "{type: asha, eta: 3}", "s.yaml: top level, key 'early_stop', value {'eta': 3, 'type': 'asha'}: "
                                   "unknown key 'eta' (did you mean 'reduction_factor'?); "
                                   "allowed: type, min_epochs, reduction_factor, by"),
    ("top", "{type: asha, reduction_factor: 1}", "s.yaml: top level, key 'early_stop', value "
                                                "{'reduction_factor': 1, 'type': 'asha'}: "
                                                "reduction_factor must be an integer >= 2, got 1"),
    ("top", "{type: median, min_epochs: 0}", "s.yaml: top level, key 'early_stop', value {'min_epochs': 0, "
                                            "'type': 'median'}: min_epochs must be an integer >= 1, got 0"),
    ("top", "{type: asha, by: [activaton]}", "s.yaml: top level, key 'early_stop', value "
                                            "{'by': ['activaton'], 'type': 'asha'}: by: 'activaton' is not a setting; "
                                            "give settings such as [activation] (did you mean 'activation'?)"),
    ("top", "{type: median, reduction_factor: 3}", "s.yaml: top level, key 'early_stop', value "
                                                  "{'reduction_factor': 3, 'type': 'median'}: "
                                                  "reduction_factor applies to type asha only"),
    ("grid", "asha", "s.yaml: grid 'g', key 'early_stop', value 'asha': "
                     "early_stop must be a mapping such as {type: asha, min_epochs: 1}"),
    ("grid", "{min_epochs: 2}", "s.yaml: grid 'g', key 'early_stop', value {'min_epochs': 2}: "
                                "missing 'type': asha or median"),
    ("search", "[asha]", "s.yaml: search 's', key 'early_stop', value ['asha']: "
                         "early_stop must be a mapping such as {type: asha, min_epochs: 1}"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_specs_name_file_grid_key_value(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text, "s.yaml")


@pytest.mark.parametrize("setting,written,reason", BAD_PARAMS)
def test_bad_search_parameters_name_file_search_key_value(setting, written, reason):
    with pytest.raises(SpecError) as caught:
        parse_spec(SEARCH.format(setting, written), "s.yaml")
    prefix = f"s.yaml: search 's', key '{setting}', value "
    assert str(caught.value).startswith(prefix) and str(caught.value).endswith(": " + reason)


@pytest.mark.parametrize("where,written,message", EARLY_STOPS)
def test_bad_early_stops_name_where_they_are(where, written, message):
    text = {"top": f"experiment: e\nearly_stop: {written}\ngrids:\n  g: {{lr: [0.1]}}\n",
            "grid": f"experiment: e\ngrids:\n  g: {{lr: [0.1], early_stop: {written}}}\n",
            "search": f"experiment: e\nsearches:\n  s: {{method: tpe, trials: 2, space: {{lr: [0.1, 0.2]}}, "
                      f"early_stop: {written}}}\n"}[where]
    with pytest.raises(SpecError, match=exact(message)):
        parse_spec(text, "s.yaml")
