"""The sweep file: sweeps.yaml -> a validated SweepSpec (file.py, with the search spaces and early-stop
rules of space.py) -> the runs it plans (runs.py: each run's settings, key and name).

Pure: it imports the standard library, PyYAML, mnist_core.config and sweep.errors; no torch, MLflow
or Optuna, and nothing else of the sweep.
"""
from .file import (
           MAX_FILE_BYTES,
           MAX_RUNS,
           AdaptiveSeeds,
           SpecError,
           SweepSpec,
           count_runs,
           load_spec,
           parse_spec,
           select,
)
from .runs import PlannedRun, expand, run_key, run_name, trial_config
from .space import EarlyStop, Param, SearchSpec, describe_search

__all__ = ["SpecError", "SweepSpec", "AdaptiveSeeds", "PlannedRun", "SearchSpec", "Param", "EarlyStop", "MAX_RUNS",
           "MAX_FILE_BYTES", "parse_spec", "load_spec", "expand", "select", "count_runs", "run_key",
           "run_name", "trial_config", "describe_search"]
