import pytest

from mnist_core import RunConfig
from sweep.spec import SpecError, expand, parse_spec, run_key, run_name

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
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_specs_name_file_grid_key_value(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text, "s.yaml")
