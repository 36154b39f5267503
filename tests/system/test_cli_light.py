"""`sweep --help` and `sweep plan` answer at once: they import neither torch nor MLflow (nor pandas)."""
import subprocess
import sys

import pytest

from conftest import log_run, new_store

pytestmark = pytest.mark.system  # subprocesses

HEAVY = ("torch", "mlflow", "pandas", "optuna", "scipy", "matplotlib")
PROBE = """
import sys
from sweep.cli.app import main
from sweep.tracking.mlflow_store import MlflowStore
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("MODULES", " ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def imported(*args, env=None) -> set:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, env=env)
    line = next(l for l in done.stdout.splitlines() if l.startswith("MODULES"))
    return set(line.split()[1:])


@pytest.fixture
def tracked(tmp_path):
    spec, uri, experiment_id, parent = new_store(tmp_path, "experiment: light\ndefaults: {epochs: 1}\n"
                                                           "grids:\n  g: {lr: [0.1, 0.2]}\n")
    from sweep.spec import expand

    log_run(uri, experiment_id, parent, expand(spec)[0], spec.name, 0.1)
    from sweep import queue
    from sweep.tracking.mlflow_store import MlflowStore

    queue.read_states(MlflowStore(uri), spec.experiment, [r.key for r in expand(spec)])  # the index beside the store
    return spec.path, uri


def test_help_and_plan_import_neither_torch_nor_mlflow(tracked):
    path, uri = tracked
    assert not imported("--help") & set(HEAVY)
    assert not imported("run", "--help") & set(HEAVY)
    assert not imported("plan", path, "--tracking-uri", uri) & set(HEAVY)
