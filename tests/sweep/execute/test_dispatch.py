"""The local pool's helper processes: what they leave behind when the sweep's process is cut short."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CUT_SHORT = """
import os
from joblib.externals.loky.backend.context import get_context
from sweep.execute.dispatch import JoblibPool
JoblibPool("loky").round([], 1)    # a sweep's first round starts loky's resource tracker
lock = get_context("loky").Lock()  # a lock the tracker follows, as it follows the executor's
os._exit(0)                        # gone before the lock's finalizer ran, as when a Ctrl-C cuts the exit short
"""


@pytest.mark.system
def test_a_lock_left_by_an_exit_cut_short_is_removed_without_a_word():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # the tracker shares stderr: capturing it waits for the tracker's end, when it removes the lock
    done = subprocess.run([sys.executable, "-c", CUT_SHORT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
