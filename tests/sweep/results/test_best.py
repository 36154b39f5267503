"""`sweep best`: settings ranked by their mean over seeds, with intervals and Welch's test."""
import io
import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from sweep.cli import main
from sweep.results.best import best_by
from sweep.results.fetch import COLUMNS
from sweep.results.words import best_words
from sweep.spec import expand

from conftest import log_run, new_store

T_975_2 = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom

SPEC = """
experiment: best
defaults: {epochs: 3}
seeds: [1, 2, 3]
grids:
  g: {activation: [relu, tanh], lr: [0.01, 0.1]}
"""
NAN = float("nan")
# final test errors per (activation, lr) and seed 1, 2, 3; tanh 0.01: seed 2 diverged, seed 3 was stopped
ERRORS = {("relu", 0.1): [0.030, 0.031, 0.032], ("relu", 0.01): [0.040, 0.045, 0.050],
          ("tanh", 0.1): [0.031, 0.035, 0.033], ("tanh", 0.01): [0.036, NAN, 0.2]}

VAL_SPEC = """
experiment: val
defaults: {epochs: 2}
seeds: [1, 2]
grids:
  g: {lr: [0.01, 0.1]}
"""
# (val_error, test_error) per lr and seed: validation prefers 0.01, the test set 0.1
VAL = {0.01: [(0.020, 0.030), (0.022, 0.032)], 0.1: [(0.025, 0.025), (0.027, 0.026)]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("best")
    spec, uri, experiment_id, parent = new_store(folder, SPEC)
    ids = {}
    for run in expand(spec):
        c = run.config
        error = ERRORS[(c.activation, c.lr)][c.seed - 1]
        ids[(c.activation, c.lr, c.seed)] = log_run(
            uri, experiment_id, parent, run, spec.name, error, diverged=math.isnan(error),
            pruned=error == 0.2, epochs_completed=1 if error == 0.2 else None)
    val_spec, _, val_id, val_parent = new_store(folder, VAL_SPEC, "val.yaml")
    for run in expand(val_spec):
        val_error, test_error = VAL[run.config.lr][run.config.seed - 1]
        ids[("val", run.config.lr, run.config.seed)] = log_run(uri, val_id, val_parent, run, val_spec.name, test_error,
                                                               val_error=val_error)
    return folder, uri, ids


def best(uri, *args):
    result = CliRunner().invoke(main, ["best", *map(str, args), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    return result


def test_settings_are_ranked_by_the_mean_over_seeds_with_interval_and_welch(store):
    folder, uri, ids = store
    out = best(uri, folder / "s.yaml", "--format", "csv").stdout
    table = pd.read_csv(io.StringIO(out))
    assert out.splitlines()[0] == ("activation,lr,test_error,test_error_std,test_error_ci_low,test_error_ci_high,n,"
                                   "train_error,epochs,ranked_by,closest_rival,p_value,p_holm,rivals,distinguishable,p_ahead,"
                                   "p_ahead_ci_low,p_ahead_ci_high,seeds_needed,run_id,agent_uri")
    relu, tanh = table.iloc[0], table.iloc[1]
    assert (relu["activation"], relu["lr"], relu["n"]) == ("relu", 0.1, 3)
    assert relu["test_error"] == pytest.approx(0.031) and relu["test_error_std"] == pytest.approx(0.001)
    half = T_975_2 * 0.001 / math.sqrt(3)
    assert (relu["test_error_ci_low"], relu["test_error_ci_high"]) == pytest.approx((0.031 - half, 0.031 + half))
    assert relu["train_error"] == pytest.approx(0.0155) and relu["epochs"] == 3 and relu["ranked_by"] == "test_error"
    assert relu["closest_rival"] == "lr=0.01"
    expected = scipy_stats.ttest_ind([0.030, 0.031, 0.032], [0.040, 0.045, 0.050], equal_var=False).pvalue
    assert relu["p_value"] == pytest.approx(expected) and bool(relu["distinguishable"]) is True
    assert relu["p_holm"] == relu["p_value"] and relu["rivals"] == 1  # one rival: nothing to correct
    assert relu["p_ahead"] == 1.0 and math.isnan(relu["seeds_needed"])  # every seed of lr 0.1 beats every one of 0.01
    assert relu["run_id"] == ids[("relu", 0.1, 1)]  # the best seed's run represents the setting
    assert relu["agent_uri"].endswith(f"{ids[('relu', 0.1, 1)]}/artifacts/mnist_agent.pt")
    # tanh 0.01 has one usable seed (one diverged, one stopped): no test against it
    assert (tanh["lr"], tanh["n"], tanh["closest_rival"]) == (0.1, 3, "lr=0.01")
    assert tanh["test_error"] == pytest.approx(0.033) and tanh["test_error_std"] == pytest.approx(0.002)
    assert math.isnan(tanh["p_value"]) and pd.isna(tanh["distinguishable"])


def test_json_gives_scripts_the_same_answer(store):
    folder, uri, _ = store
    rows = json.loads(best(uri, folder / "s.yaml", "--format", "json").stdout)
    assert [r["activation"] for r in rows] == ["relu", "tanh"]
    assert rows[0]["distinguishable"] is True and rows[1]["distinguishable"] is None and rows[1]["p_value"] is None


def test_the_table_says_in_words_how_sure_each_answer_is(store):
    folder, uri, _ = store
    out = best(uri, folder / "s.yaml").stdout
    header = out.splitlines()[0].split()
    assert header[:5] == ["activation", "lr", "test_error", "95%", "CI"] and "n" in header
    assert "3.10%" in out and f"{100 * (0.031 - T_975_2 * 0.001 / math.sqrt(3)):.2f} to" in out
    p_relu = scipy_stats.ttest_ind([0.030, 0.031, 0.032], [0.040, 0.045, 0.050], equal_var=False).pvalue
    p_across = scipy_stats.ttest_ind([0.030, 0.031, 0.032], [0.031, 0.035, 0.033], equal_var=False).pvalue
    assert (f"relu: decided at n = 3: lr 0.1 is ahead of lr 0.01 by 1.40 points (p = {p_relu:.2f}, n = 3 and 3); "
            f"a seed of lr 0.1 beats one of lr 0.01 with probability 1.00 (95% CI 1.00 to 1.00).") in out
    assert ("tanh: no test: lr 0.1 is 0.30 points below lr 0.01, but lr 0.01 has n = 1: no test can be made "
            "(n = 3 and 1).") in out
    assert (f"Across activation: not decided at n = 3: relu and tanh are not distinguishable at n = 3 "
            f"(p = {p_across:.2f}); a seed of relu beats one of tanh with probability 0.83") in out  # 7.5 of 9 pairs
    assert "1 run(s) stopped early (pruned) were left out; --include-stopped ranks them too." in out


def test_the_table_fits_in_120_characters_unless_asked_for_every_column(store):
    folder, uri, ids = store
    out = best(uri, folder / "s.yaml").stdout
    table = out.split("\n\n")[0].splitlines()
    assert all(len(line) < 120 for line in table) and "agent_uri" not in out and "epochs" not in table[0]
    assert table[0].split()[-1] == "run_id" and ids[("relu", 0.1, 1)] in table[1]
    assert table[1].split()[:2] == ["relu", "0.1"] and " 3 " in table[1]  # numbers as the sentences write them
    wide = best(uri, folder / "s.yaml", "--wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["epochs", "run_id", "agent_uri"] and "/artifacts/mnist_agent.pt" in wide[1]
    picked = best(uri, folder / "s.yaml", "--columns", "lr,activation,agent_uri").stdout.splitlines()
    assert picked[0].split() == ["lr", "activation", "agent_uri"] and picked[1].split()[:2] == ["0.1", "relu"]
    assert "agent_uri" in best(uri, folder / "s.yaml", "--format", "csv").stdout.splitlines()[0]
    result = CliRunner().invoke(main, ["best", str(folder / "s.yaml"), "--columns", "lr,colour", "--tracking-uri", uri])
    assert result.exit_code == 2 and "--columns: no column 'colour'; columns: activation, lr," in result.output


def test_stopped_runs_join_only_on_request(store):
    folder, uri, ids = store
    table = pd.read_csv(io.StringIO(best(uri, folder / "s.yaml", "--format", "csv", "--include-stopped").stdout))
    tanh = table.iloc[1]
    expected = scipy_stats.ttest_ind([0.031, 0.035, 0.033], [0.036, 0.2], equal_var=False).pvalue
    assert tanh["p_value"] == pytest.approx(expected) and bool(tanh["distinguishable"]) is False
    by_lr = pd.read_csv(io.StringIO(best(uri, folder / "s.yaml", "--by", "activation", "--by", "lr",
                                         "--format", "csv", "--include-stopped").stdout))
    assert by_lr.set_index(["activation", "lr"]).loc[("tanh", 0.01), "n"] == 2
    result = CliRunner().invoke(main, ["best", str(folder / "s.yaml"), "--format", "csv", "--tracking-uri", uri])
    assert "1 run(s) stopped early (pruned) were left out" in result.stderr


def test_validation_error_ranks_when_the_runs_have_it_and_test_error_is_still_shown(store):
    folder, uri, ids = store
    out = best(uri, folder / "val.yaml", "--format", "csv").stdout
    assert out.splitlines()[0].startswith("activation,lr,val_error,val_error_std,val_error_ci_low,val_error_ci_high,"
                                          "n,test_error,train_error,")
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert (row["lr"], row["ranked_by"], row["closest_rival"]) == (0.01, "val_error", "lr=0.1")
    assert row["val_error"] == pytest.approx(0.021) and row["test_error"] == pytest.approx(0.031)
    expected = scipy_stats.ttest_ind([0.020, 0.022], [0.025, 0.027], equal_var=False).pvalue
    assert row["p_value"] == pytest.approx(expected) and bool(row["distinguishable"]) is False
    assert row["run_id"] == ids[("val", 0.01, 1)]
    words_out = best(uri, folder / "val.yaml").stdout
    assert "Ranked by val_error" in words_out and "test error shown was not used to choose" in words_out
    assert "relu: not decided at n = 2: lr 0.01 and lr 0.1 are not distinguishable at n = 2 (p = 0.07)" in words_out
    by_test = pd.read_csv(io.StringIO(best(uri, folder / "val.yaml", "--metric", "test_error", "--format", "csv").stdout))
    assert by_test.iloc[0]["lr"] == 0.1 and by_test.iloc[0]["test_error"] == pytest.approx(0.0255)


def test_bad_options_are_one_clear_line(store):
    folder, uri, _ = store
    for args, message in ((["--metric", "accuracy"], "unknown metric 'accuracy'"),
                          (["--by", "colour"], "cannot group by 'colour': not a setting"),
                          (["--by", "seed"], "cannot group by 'seed'"),
                          (["--grid", "nope"], "no grid named 'nope'")):
        result = CliRunner().invoke(main, ["best", str(folder / "s.yaml"), *args, "--tracking-uri", uri])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def runs_frame(rows):
    """A results.runs frame from (activation, lr, seed, outcome, test_error[, val_error]) rows."""
    records = []
    for i, (activation, lr, seed, outcome, test_error, *val) in enumerate(rows):
        record = dict.fromkeys(COLUMNS, NAN)
        record.update(key=f"k{i}", name=f"r{i}", grids="g", activation=activation, depth=2, width=50, lr=lr,
                      momentum=0.0, schedule="fixed", gamma=0.7, restart_period=2, epochs=3, batch_size=64,
                      test_batch_size=1000, seed=seed, outcome=outcome, state="done", run_id=f"id{i}",
                      test_error=test_error, train_error=test_error / 2, val_error=val[0] if val else NAN,
                      agent_uri=f"file:///a/id{i}/mnist_agent.pt")
        records.append(record)
    return pd.DataFrame(records, columns=COLUMNS)


def test_one_seed_per_setting_gives_no_interval_and_says_so():
    result = best_by(runs_frame([("relu", 0.1, 1, "done", 0.03), ("relu", 0.01, 1, "done", 0.04),
                                 ("tanh", 0.1, 1, "done", 0.035)]), ["activation"])
    assert list(result.table["n"]) == [1, 1] and result.table["test_error_std"].isna().all()
    assert result.table["test_error_ci_low"].isna().all() and result.table["p_value"].isna().all()
    assert list(result.table["distinguishable"]) == [None, None]
    assert "n = 1 per setting: no interval can be given and no test made " \
           "(give the sweep file several seeds, e.g. seeds: [1, 2, 3])." in best_words(result)


def test_seeds_measured_on_all_or_a_sample_of_the_training_images_are_one_setting():
    runs = runs_frame([("relu", 0.1, 1, "done", 0.03), ("relu", 0.1, 2, "done", 0.031), ("relu", 0.1, 3, "done", 0.032)])
    runs["train_eval"] = [None, "full", "sample"]  # stored before train_eval existed, then each way
    result = best_by(runs, ["activation"])
    assert list(result.table["n"]) == [3] and "train_eval" not in result.table


def test_auto_falls_back_to_test_error_when_some_runs_lack_validation():
    runs = runs_frame([("relu", 0.1, 1, "done", 0.03, 0.02), ("relu", 0.01, 1, "done", 0.04)])
    result = best_by(runs, [])
    assert result.metric == "test_error" and result.table.iloc[0]["lr"] == 0.1
    assert "1 of 2 runs have no val_error: ranked by test_error" in best_words(result)
    assert best_by(runs_frame([("relu", 0.1, 1, "done", 0.03, 0.02)]), []).metric == "val_error"


def test_failed_diverged_missing_and_stopped_runs_are_not_candidates():
    runs = runs_frame([("relu", 0.1, 1, "done", 0.05), ("relu", 0.3, 1, "diverged", NAN),
                       ("relu", 1.0, 1, "failed", NAN), ("relu", 0.01, 1, "missing", NAN),
                       ("relu", 0.03, 1, "stopped", 0.01)])
    result = best_by(runs, ["activation"])
    assert result.table.iloc[0]["lr"] == 0.1 and result.stopped == 1 and result.table.iloc[0]["closest_rival"] is None
    assert best_by(runs, ["activation"], include_stopped=True).table.iloc[0]["lr"] == 0.03
    assert best_by(runs_frame([("relu", 0.1, 1, "missing", NAN)]), ["activation"]).table.empty


def test_a_group_is_decided_only_when_its_winner_beats_every_other_setting_after_holm():
    leader, near = [0.020, 0.021, 0.022, 0.021], [0.0215, 0.0235, 0.0225, 0.0230]
    closer = [v + 0.0001 for v in near]
    rows = [("relu", 0.1, seed + 1, "done", v) for seed, v in enumerate(leader)]
    for lr, values in ((0.03, near), (0.01, near[::-1]), (0.3, closer)):
        rows += [("relu", lr, seed + 1, "done", v) for seed, v in enumerate(values)]
    # tanh's winner has a runner-up close in mean but tight, and a rival further off but spread wide:
    # the wide one is the rival it is least told apart from
    rows += [("tanh", 0.1, s, "done", v) for s, v in enumerate([0.030, 0.0302, 0.0301], 1)]
    rows += [("tanh", 0.03, s, "done", v) for s, v in enumerate([0.0320, 0.0322, 0.0321], 1)]
    rows += [("tanh", 1.0, s, "done", v) for s, v in enumerate([0.02, 0.09, 0.05], 1)]
    table = best_by(runs_frame(rows), ["activation"]).table.set_index("activation")

    relu = table.loc["relu"]
    p = [scipy_stats.ttest_ind(leader, other, equal_var=False).pvalue for other in (near, near[::-1], closer)]
    assert max(p) < 0.05 and 3 * min(p) > 0.05  # each alone told apart; not after Holm over the three
    assert relu["rivals"] == 3 and relu["p_value"] == pytest.approx(max(p)) and relu["p_holm"] > 0.05
    assert relu["distinguishable"] is not None and not relu["distinguishable"] and relu["seeds_needed"] > 4

    tanh = table.loc["tanh"]
    assert tanh["closest_rival"] == "lr=1" and tanh["rivals"] == 2 and not tanh["distinguishable"]
    wide = scipy_stats.ttest_ind([0.030, 0.0302, 0.0301], [0.02, 0.09, 0.05], equal_var=False).pvalue
    assert tanh["p_holm"] == pytest.approx(wide)  # the largest p: Holm leaves it as it is
