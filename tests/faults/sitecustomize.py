"""Faults injected into a `sweep run` process and its workers, for the tests only.

Put this folder on PYTHONPATH and set SWEEP_TEST_FAULTS to a JSON object: {"fail": [KEY, ...],
"fail_once": [KEY, ...], "marks": FOLDER, "epoch_sleep": SECONDS, "imports": FOLDER}. A run whose
key is in "fail" raises on every attempt; one in "fail_once" raises the first time only (a marker
file in FOLDER remembers it). With "epoch_sleep", every epoch lasts that much longer, sleeping: a run
holds its lease for as long as a long run would, without keeping a core busy. With "imports", each
training process writes into FOLDER (a file named after its pid) which of MLflow and SQLAlchemy it
had loaded once it trained (claimed, its params and data logged).
"""
import json
import os

_faults = os.environ.get("SWEEP_TEST_FAULTS")

if _faults:
    import time
    from pathlib import Path

    import mnist_core
    import mnist_core.fused
    from sweep.spec import run_key

    _plan = json.loads(_faults)
    _sleep = float(_plan.get("epoch_sleep", 0))

    def _maybe_fail(configs):
        for config in configs:
            key = run_key(config)
            if key in _plan.get("fail", ()):
                raise RuntimeError(f"injected failure for run {key}")
            mark = Path(_plan.get("marks", ".")) / key
            if key in _plan.get("fail_once", ()) and not mark.exists():
                mark.touch()
                raise RuntimeError(f"injected failure for run {key}, first attempt")

    def _slowed(on_epoch, first_only=False):
        if not _sleep or on_epoch is None:
            return on_epoch

        def slowed(*args):
            if not first_only or args[0] == 0:
                time.sleep(_sleep)
            return on_epoch(*args)
        return slowed

    _train, _train_fused = mnist_core.train, mnist_core.fused.train_fused

    def _say_imports():
        if "imports" in _plan:
            import sys

            loaded = [m for m in ("mlflow", "sqlalchemy") if m in sys.modules]
            (Path(_plan["imports"]) / str(os.getpid())).write_text(",".join(loaded))

    def train(config, *args, on_epoch=None, **kwargs):
        _maybe_fail([config])
        result = _train(config, *args, on_epoch=_slowed(on_epoch), **kwargs)
        _say_imports()
        return result

    def train_fused(configs, *args, on_epoch=None, **kwargs):
        _maybe_fail(configs)
        result = _train_fused(configs, *args, on_epoch=_slowed(on_epoch, first_only=True), **kwargs)
        _say_imports()
        return result

    mnist_core.train = train
    mnist_core.fused.train_fused = train_fused
