"""Start-up settings: OpenMP threads wait passively when another program keeps a core busy."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from conftest import ROOT

POLICY = "import captcha_recognize, os; print(os.environ.get('OMP_WAIT_POLICY'))"
SPIN = "import time\nt = time.time() + 20\nwhile time.time() < t:\n    pass\n"


@contextmanager
def busy_core():
    """Another process spinning on one core while the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)  # the loop is running
        yield
    finally:
        hog.kill()
        hog.wait()


def policy_beside_a_busy_core(env: dict[str, str]) -> str:
    with busy_core():
        return subprocess.run([sys.executable, "-c", POLICY], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60).stdout.strip()


@pytest.mark.slow
def test_a_busy_core_makes_threads_wait_passively_and_a_users_policy_is_kept():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert policy_beside_a_busy_core(env) == "PASSIVE"
    assert policy_beside_a_busy_core(dict(env, OMP_WAIT_POLICY="ACTIVE")) == "ACTIVE"


@pytest.mark.slow
def test_busy_cores_counts_a_spinning_process():
    from captcha_recognize import runtime
    with busy_core():
        assert runtime.busy_cores() >= 0.8
