"""What `sweep run` prints: a line per run, and commands at its end that answer the sweep's own questions."""
from sweep.cli.progress import outcome_line
from sweep.cli.run import answer_command
from sweep.execute.worker import Outcome
from sweep.spec import load_spec, parse_spec

from conftest import ROOT

SEARCHED = """
experiment: e
grids:
  lrs: {lr: [0.01, 0.1]}
searches:
  s: {method: random, trials: 2, space: {lr: {min: 0.001, max: 0.1, distribution: log_uniform_values}}}
"""


def test_the_default_sweep_is_answered_per_grid_by_what_each_grid_varies_besides_lr():
    spec = load_spec(str(ROOT / "sweeps.yaml"))
    assert answer_command(spec, "sweeps.yaml") == "sweep best sweeps.yaml --grid lr_by_activation --by activation"
    width = answer_command(spec, "sweeps.yaml", ("lr_by_width",))
    assert width == "sweep best sweeps.yaml --grid lr_by_width --by width"


def test_a_grid_of_learning_rates_alone_and_a_search_are_answered_without_groups():
    spec = parse_spec(SEARCHED, "s.yaml")
    assert answer_command(spec, "s.yaml") == "sweep best s.yaml --grid lrs"
    assert answer_command(spec, "s.yaml", ("s",)) == "sweep best s.yaml --grid s"


def test_a_fused_runs_time_says_it_is_its_share_of_its_groups():
    alone = Outcome("k1", "relu-lr0.1-d2-w50", "done", "r1", 0.0312, 3.04)
    fused = Outcome("k2", "relu-lr0.1-d2-w200", "done", "r2", 0.0201, 36.8, together=7)
    assert outcome_line(alone) == "  done  relu-lr0.1-d2-w50: test error 3.12% (3.0s)"
    assert outcome_line(fused) == "  done  relu-lr0.1-d2-w200: test error 2.01% (36.8s: 1/7 of a fused group's time)"
