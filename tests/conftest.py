"""Shared fixtures: small generated captcha folders, quickly trained checkpoints and a fresh one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from captcha_recognize.bench import CHROMEDRIVER, CHROMIUM, chromium
from captcha_recognize.data.synthetic import generate
from captcha_recognize.reading.checkpoint import untrained_checkpoint as fresh_checkpoint
from captcha_recognize.runtime import child_env
from captcha_recognize.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
__all__ = ["NEEDS_CHROMIUM", "ROOT", "fresh_checkpoint", "run_script"]
NEEDS_CHROMIUM = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, "
                                           f"{CHROMEDRIVER}); apt-get install -y chromium chromium-driver")
RUNNING: dict[str, object] = {"slow": True, "test": ""}  # the test being set up or run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI (``CI=true``) a test skipped for a missing tool fails: CI installs every tool a test needs,
    and a skip there would pass a promise nobody checked."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"skipped in CI, where every tool is installed: {reason}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    RUNNING.update(slow=item.get_closest_marker("slow") is not None, test=item.nodeid)


@pytest.fixture(scope="session", autouse=True)
def only_slow_tests_train_or_start_processes():
    """A test that trains a model or starts a process, itself or through its fixtures, must be marked
    ``slow``, so that ``-m "not slow"`` stays fast."""
    from captcha_recognize.training import supervised
    popen, train_locked = subprocess.Popen.__init__, supervised.train_locked

    def check(what: str) -> None:
        if not RUNNING["slow"]:
            pytest.fail(f"{RUNNING['test']} {what} but is not marked slow", pytrace=False)

    def guarded_popen(self, *args, **kwargs):
        check("starts a process")
        popen(self, *args, **kwargs)

    def guarded_train(*args, **kwargs):
        check("trains a model")
        return train_locked(*args, **kwargs)
    subprocess.Popen.__init__ = guarded_popen
    supervised.train_locked = guarded_train
    yield
    subprocess.Popen.__init__, supervised.train_locked = popen, train_locked


def run_script(*args: str, cwd: Path | None = None, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in a fresh Python process."""
    env = child_env({"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **env})
    args = tuple(str(ROOT / a) if a.endswith(".py") else a for a in args)  # scripts run from any cwd
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """64 four-digit captchas, 50x22."""
    out = tmp_path_factory.mktemp("digits")
    generate(out, 64, seed=11, show=False)
    return out


@pytest.fixture(scope="session")
def fresh_ckpt(tmp_path_factory) -> Path:
    """An untrained CNN checkpoint for 4-digit 50x22 captchas (no training: for fast tests)."""
    return fresh_checkpoint(tmp_path_factory.mktemp("fresh") / "fresh.pth")


@pytest.fixture(scope="session")
def cnn_ckpt(tmp_path_factory, digits_dir) -> Path:
    """A CNN overfitted on ``digits_dir`` (no augmentation, no validation split)."""
    out = tmp_path_factory.mktemp("cnn") / "cnn.pth"
    train(TrainConfig(data=[str(digits_dir)], arch="cnn", epochs=30, val_split=0, augment=False, batch_size=16, lr=3e-3,
                      label_smoothing=0, plot="none", out=str(out), quiet=True))
    return out


@pytest.fixture(scope="session")
def crnn_ckpt(tmp_path_factory, digits_dir) -> Path:
    """A briefly trained CRNN on ``digits_dir``."""
    out = tmp_path_factory.mktemp("crnn") / "crnn.pth"
    train(TrainConfig(data=[str(digits_dir)], arch="crnn", epochs=4, val_split=0.25, batch_size=16, plot="none",
                      out=str(out), quiet=True))
    return out


@pytest.fixture(scope="session")
def calibrated_ckpt(tmp_path_factory) -> Path:
    """The shipped model fine-tuned for one epoch on 256 generated captchas, half of them held out:
    training ends by calibrating it on validation answers both right and wrong (fast, slow tests)."""
    data = tmp_path_factory.mktemp("digits256")
    generate(data, 256, seed=12, show=False)
    out = tmp_path_factory.mktemp("calibrated") / "calibrated.pth"
    train(TrainConfig(data=[str(data)], init_from=str(ROOT / "captcha_recognize.pth"), epochs=1, lr=1e-4,
                      val_split=0.5, plot="none", out=str(out), quiet=True))
    return out


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium driven by Selenium, with Debian's browser and driver (nothing downloaded)."""
    pytest.importorskip("selenium.webdriver")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    driver = chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()
