"""Running a sweep: its settings (settings.py), which runs train together (jobs.py), the loop that
dispatches rounds of jobs (runner.py) and sums up what happened (accounting.py), the search trials it
asks for (trials.py), the workers that claim and train the runs (dispatch.py through joblib,
worker.py, devices.py).

It may import the sweep's spec, queue, adaptive and tracking packages, and mnist_core (the workers
train with it); nothing of results, handin or cli.
"""
import importlib

_HOMES = {"SweepInterrupted": "accounting", "SweepSummary": "accounting", "exit_status": "accounting",
          "plan_jobs": "jobs", "Pool": "runner", "Progress": "runner", "Sweep": "runner", "run_sweep": "runner",
          "Settings": "settings", "check_settings": "settings"}
__all__ = sorted(_HOMES)


def __getattr__(name):  # loaded on first use: the CLI reads the settings without loading joblib
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
