"""A hostile or huge sweep file fails fast, in little memory, with a short message; a valid one
expands once, to the keys it always had."""
import ast
import hashlib
import json
import time
import tracemalloc
import types

import pytest

import sweep.spec.runs as spec_module
from mnist_core import RunConfig
from mnist_core.config import DEFAULTS
from sweep.spec import (
    MAX_FILE_BYTES,
    MAX_RUNS,
    AdaptiveSeeds,
    SpecError,
    expand,
    load_spec,
    parse_spec,
    run_key,
    run_name,
)

from conftest import ROOT

# "Billion laughs": nine levels of nine aliases, 9^9 strings once expanded.
ALIAS_BOMB = ("experiment: e\ngrids:\n  g:\n    a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
              + "".join(f"    {c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
              + "    lr: *i\n")


def refusal(text: str, **kwargs) -> tuple[str, float, int]:
    """The message, seconds taken and peak bytes allocated to refuse `text`."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError) as caught:
            parse_spec(text, "s.yaml", **kwargs)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(caught.value), seconds, peak


def test_alias_bomb_is_refused_at_once():
    assert len(ALIAS_BOMB) < 400
    message, seconds, peak = refusal(ALIAS_BOMB)
    assert message.startswith("s.yaml: the value at line 12 is used again through a YAML alias")  # *i's anchor
    assert seconds < 2 and peak < 5e6 and len(message) < 200


def test_ten_million_runs_are_counted_not_expanded():
    text = ("experiment: e\ngrids:\n  g: {lr: [%s], width: [%s], depth: [%s]}\n"
            % (",".join(f"{0.001 * i:.3f}" for i in range(1, 1001)), ",".join(map(str, range(1, 101))),
               ",".join(map(str, range(1, 101)))))
    message, seconds, peak = refusal(text)
    assert message == ("s.yaml: the sweep has up to 10,000,000 runs (grid 'g': 10,000,000), over the limit of "
                       "100,000; make it smaller, or allow it with --max-runs 10000000")
    assert seconds < 2 and peak < 20e6
    spec = parse_spec(text, "s.yaml", max_runs=None)  # allowed, and still not expanded
    assert spec.max_runs is None
    with pytest.raises(SpecError, match="up to 10,000,000 runs"):
        expand(spec, max_runs=MAX_RUNS)


def test_max_runs_is_a_parameter_of_parse_load_and_expand(tmp_path):
    text = "experiment: e\nseeds: [1, 2, 3]\ngrids:\n  g: {lr: [0.03, 0.2]}\n  h: {depth: [1, 2, 3, 4]}\n"
    with pytest.raises(SpecError, match=r"up to 18 runs \(grid 'h': 12\), over the limit of 10;.*--max-runs 18$"):
        parse_spec(text, "s.yaml", max_runs=10)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="over the limit of 17"):
        load_spec(path, max_runs=17)
    spec = load_spec(path, max_runs=18)
    assert len(expand(spec)) == 15  # the reference run (lr 0.03, depth 2) is in both grids: an upper bound
    assert len(expand(spec, ["g"], max_runs=6)) == 6
    with pytest.raises(SpecError, match=r"up to 12 runs \(grid 'h': 12\), over the limit of 6"):
        expand(spec, ["h"], max_runs=6)


def test_files_that_are_not_sweep_files(tmp_path):
    cases = {
        "big.yaml": b"experiment: e\n" + b"#" * MAX_FILE_BYTES,
        "binary.yaml": b"experiment: e\x00\x01\x02",
        "latin1.yaml": "experiment: café\ngrids:\n  g: {lr: 0.1}\n".encode("latin-1"),
    }
    messages = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SpecError) as caught:
            load_spec(tmp_path / name)
        messages[name] = str(caught.value)
    assert messages["big.yaml"] == f"{tmp_path / 'big.yaml'}: over 1 MiB, the size limit of a sweep file"
    assert messages["binary.yaml"] == (f"{tmp_path / 'binary.yaml'}: not a UTF-8 text file (NUL byte at offset 13); "
                                       f"a sweep file is YAML text")
    assert messages["latin1.yaml"] == (f"{tmp_path / 'latin1.yaml'}: not a UTF-8 text file (byte 0xe9 at offset 15); "
                                       f"save the sweep file as UTF-8")
    with pytest.raises(SpecError, match="cannot read sweep file"):
        load_spec(tmp_path)
    with pytest.raises(SpecError, match=r"^<sweep>: over 1 MiB, the size limit of a sweep file$"):
        parse_spec("#" * (MAX_FILE_BYTES + 1))
    ok = tmp_path / "ok.yaml"
    ok.write_bytes(b"experiment: e\ngrids:\n  g: {lr: 0.1}\n" + b"#" * (MAX_FILE_BYTES - 40))
    assert load_spec(ok).grids == {"g": {"lr": (0.1,)}}


def test_expansion_happens_once_per_spec(monkeypatch):
    built = []

    def counting_config(**settings):
        built.append(settings)
        return RunConfig(**settings)

    monkeypatch.setattr(spec_module, "RunConfig", counting_config)
    spec = parse_spec("experiment: e\ngrids:\n  a: {lr: [0.1, 0.2]}\n  b: {depth: [1, 2, 3]}\n")
    assert built == []  # parsing validates every value alone and builds no run
    first = expand(spec)
    per_grid = [expand(spec, [name]) for name in spec.grids]  # as the report does
    again = expand(spec)
    assert len(built) == 5 and len(first) == 5
    assert [r.key for r in again] == [r.key for r in first] and all(x is y for x, y in zip(again, first))
    again.clear()  # each call hands out its own list
    assert len(expand(spec)) == 5
    assert [r.grids for r in per_grid[1]] == [("b",)] * 3


def test_expansion_of_fifty_thousand_runs_is_quick():
    text = ("experiment: e\ngrids:\n  g: {lr: [%s], width: [%s], depth: [1, 2, 3, 4, 5]}\n"
            % (",".join(f"{0.001 * i:.3f}" for i in range(1, 101)), ",".join(map(str, range(1, 101)))))
    start = time.perf_counter()
    runs = expand(parse_spec(text))
    assert len(runs) == 50_000 and len({r.key for r in runs}) == 50_000
    assert time.perf_counter() - start < 20  # a few seconds on a loaded 2-core machine; minutes before


def test_the_default_sweep_file_asks_each_question_over_seeds_at_each_settings_own_best_lr():
    spec = load_spec(ROOT / "sweeps.yaml")
    base = {"epochs": 10, "batch_size": 64, "validation": 10000}
    assert spec.adaptive == AdaptiveSeeds(min=2, max=4)  # at most seeds 1-4 of each setting: its runs
    seeds, lrs = (1, 2, 3, 4), (0.03, 0.1, 0.3)
    grids = {  # each grid in its own order: sorted settings, the last one varying fastest
        "lr_by_activation": [RunConfig(activation=a, lr=lr, seed=s, **base) for a in ("relu", "tanh", "sigmoid", "leaky_relu")
                             for lr in (0.03, 0.1, 0.3, 1.0) for s in seeds],
        "lr_by_depth": [RunConfig(depth=d, lr=lr, seed=s, **base) for d in (1, 2, 3, 4) for lr in lrs for s in seeds],
        "lr_by_width": [RunConfig(lr=lr, seed=s, width=w, **base) for lr in lrs for s in seeds
                        for w in (10, 25, 50, 100, 200)],
        "lr_by_schedule": [RunConfig(lr=lr, schedule=sc, seed=s, **base) for lr in (0.03, 0.1, 0.3, 1.0)
                           for sc in ("fixed", "exponential", "cosine", "cosine_restarts") for s in seeds],
    }
    expected = list(dict.fromkeys(run_key(c) for configs in grids.values() for c in configs))
    runs = expand(spec)
    assert [r.key for r in runs] == expected and len(expected) == (16 + 12 + 15 + 16 - 9 - 1) * 4
    for name, configs in grids.items():
        assert [r.key for r in expand(spec, [name])] == [run_key(c) for c in configs]
    reference = next(r for r in runs if r.config == RunConfig(lr=0.1, seed=2, validation=10000))
    assert reference.grids == ("lr_by_activation", "lr_by_depth", "lr_by_width", "lr_by_schedule")


def test_run_key_is_the_hash_of_the_first_settings():
    """The formula of the first stores, written out: a key must never change under a finished sweep."""
    first = {"activation": "tanh", "depth": 3, "width": 50, "lr": 0.1, "momentum": 0.0, "schedule": "fixed",
             "gamma": 0.7, "restart_period": 2, "epochs": 10, "batch_size": 64, "test_batch_size": 1000, "seed": 1}
    expected = hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()[:16]
    assert run_key(RunConfig(activation="tanh", depth=3, lr=0.1)) == expected


def test_run_key_is_the_hash_of_the_json_of_its_keyed_settings_for_every_kind_of_value():
    always = ("activation", "depth", "width", "lr", "momentum", "schedule", "gamma", "restart_period", "epochs",
              "batch_size", "test_batch_size", "seed")
    for changes in ({}, {"lr": 1e-05}, {"lr": 0.1 + 0.2, "momentum": 0.9}, {"lr": 1, "gamma": 1},
                    {"validation": 10_000}, {"train_eval": "full", "seed": 0}, {"schedule": "cosine", "lr": 3e16},
                    {"activation": "leaky_relu", "width": 7, "depth": 5, "validation": 0, "train_eval": "sample"}):
        config = RunConfig(**changes)
        params = {k: v for k, v in config.as_params().items() if k in always or v != DEFAULTS[k]}
        expected = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        assert run_key(config) == expected, changes


def test_a_new_setting_changes_no_key_until_it_is_used(monkeypatch):
    config = RunConfig(lr=0.1, seed=2)
    key = run_key(config)
    monkeypatch.setattr(spec_module, "DEFAULTS", {**spec_module.DEFAULTS, "holdout": 0})
    at_default = types.SimpleNamespace(**config.as_params(), holdout=0)
    used = types.SimpleNamespace(**config.as_params(), holdout=5000)
    assert run_key(at_default) == key
    assert run_key(used) != key
    assert run_name(at_default) == "relu-lr0.1-d2-w50-s2" and run_name(used) == "relu-lr0.1-d2-w50-s2-holdout5000"


def test_spec_modules_stay_pure():
    for module in ("file.py", "runs.py", "space.py"):
        tree = ast.parse((ROOT / "sweep" / "spec" / module).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"torch", "mlflow", "optuna"}, module
