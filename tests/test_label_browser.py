"""The labelling page in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium labels 20 generated captchas with the keyboard against the real server.

``LABEL_SCREENSHOT=docs/labelling.png`` also saves the README's screenshot of the page."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NEEDS_CHROMIUM, ROOT
from captcha_recognize.data.folders import list_images
from captcha_recognize.data.labels import parse_label
from captcha_recognize.data.synthetic import generate

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def captchas(tmp_path, digits_dir) -> tuple[Path, dict[str, str]]:
    """21 captchas named ``cap_<i>.png`` (16 the model trained on, 5 new ones), one unreadable
    file, and the true text of each."""
    new = tmp_path / "new"
    generate(new, 5, seed=77, show=False)
    raw, truth = tmp_path / "raw", {}
    raw.mkdir()
    for i, f in enumerate(list_images([digits_dir])[:16] + list_images([new])):
        shutil.copy(f, raw / f"cap_{i:02d}.png")
        truth[f"cap_{i:02d}.png"] = parse_label(f)
    (raw / "broken.png").write_bytes(b"\x89PNG truncated")
    return raw, truth


@pytest.fixture
def server(tmp_path, captchas, cnn_ckpt):
    port, out = free_port(), tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "torch_model_label.py"), str(captchas[0]), "--out", str(out),
                             "--checkpoint", str(cnn_ckpt), "--port", str(port), "--alphabet", "0123456789",
                             "--train-args=--epochs 2"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "api/status", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the server did not start: {proc.stdout.read()[-2000:]}")
            time.sleep(0.3)
    yield url, out
    proc.terminate()
    proc.wait(30)


class Page:
    """The labelling page as the test sees it: the image shown, the input, the panel."""

    def __init__(self, driver):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        self.d, self.by, self.wait = driver, By, lambda s=20: WebDriverWait(driver, s)

    def text(self, element_id: str) -> str:
        return self.d.find_element(self.by.ID, element_id).text

    def body(self, key: str) -> str:
        return self.d.find_element(self.by.TAG_NAME, "body").get_attribute(f"data-{key}")

    def settle(self) -> str:
        """Wait for the server calls to finish; the file name shown ('' when nothing is left)."""
        self.wait().until(lambda d: self.body("pending") == "0" and (self.body("item") or "Nothing left" in
                                                                      self.text("message")))
        return self.body("item")

    def value(self) -> str:
        return self.d.find_element(self.by.ID, "label").get_attribute("value")

    def keys(self, *keys: str) -> None:
        focused = self.d.switch_to.active_element
        assert focused.get_attribute("id") == "label"  # the input keeps the focus
        focused.send_keys(*keys)


def label_all(page: Page, truth: dict[str, str], screenshot: str | None) -> dict:
    """Label everything with the keyboard; returns what was done to which file."""
    from selenium.webdriver.common.keys import Keys
    log = {"expected": {}, "accepted": {}, "skipped": None, "unreadable": None, "undone": None, "typo_in": None}
    step, labelled_before_reload = 0, None
    while (name := page.settle()) and step < 60:
        proposal, right = page.value(), truth[name]
        assert page.text("reading").startswith(f"model reads {proposal} (")
        if step == 3:  # Tab skips: it comes back at the end
            page.keys(Keys.TAB)
            log["skipped"] = name
        elif step == 5:  # a typo, undone with Ctrl+Z, then the right text
            wrong = next(t for t in ("0000", "1111", "2222", "3333") if t not in truth.values())
            page.keys(wrong, Keys.ENTER)
            page.settle()
            page.keys(Keys.CONTROL, "z")
            assert page.settle() == name and page.value() == wrong and "undone" in page.text("message")
            page.keys(right, Keys.ENTER)
            log["undone"], log["typo_in"] = wrong, name
            log["expected"][name], log["accepted"][name] = right, right == proposal
        elif step == 8:  # Ctrl+U marks it unreadable
            page.keys(Keys.CONTROL, "u")
            log["unreadable"] = name
        elif step == 10:  # a reload mid-way resumes where it was
            labelled_before_reload = len(log["expected"])
            page.d.refresh()
            page.wait().until(lambda d: page.text("done") == str(labelled_before_reload))
        elif step == 12:  # a refused label: the message, and the same image with the text typed
            page.keys("12.4", Keys.ENTER)
            assert page.settle() == name and page.value() == "12.4"
            assert page.text("message").startswith("refused: '.'")
            page.keys(right, Keys.ENTER)
            log["expected"][name], log["accepted"][name] = right, right == proposal
        else:  # Enter accepts a right proposal, else typing replaces it
            page.keys(Keys.ENTER) if proposal == right else page.keys(right, Keys.ENTER)
            log["expected"][name], log["accepted"][name] = right, right == proposal
        if screenshot and step == 6:
            page.d.save_screenshot(screenshot)
        step += 1
    assert labelled_before_reload == 8 and "Nothing left to label." in page.text("message")
    return log


def test_label_twenty_captchas_with_the_keyboard(server, browser, captchas):
    url, out = server
    raw, truth = captchas
    browser.get(url)
    page = Page(browser)
    log = label_all(page, truth, os.environ.get("LABEL_SCREENSHOT"))

    assert len(log["expected"]) == 20 and log["skipped"] in log["expected"]  # the skipped one came back
    assert 0 < sum(log["accepted"].values()) < 20  # some proposals accepted, some corrected
    assert page.text("done") == "20" and page.text("remaining") == "0"
    n_ok = sum(log["accepted"].values())
    assert page.text("accepted") == f"{round(100 * n_ok / 20)}% ({n_ok} of 20)"
    assert "broken.png" in browser.page_source and f"{log['unreadable']}: marked on the page" in browser.page_source

    db = sqlite3.connect(out.with_name("out.sqlite"))
    db.row_factory = sqlite3.Row
    rows = {Path(r["path"]).name: r for r in db.execute("SELECT * FROM items WHERE mode = 'label'")}
    labelled = {n: r for n, r in rows.items() if r["status"] == "labelled"}
    assert {n: r["label"] for n, r in labelled.items()} == log["expected"]
    assert {n: bool(r["accepted"]) for n, r in labelled.items()} == log["accepted"]
    assert rows[log["unreadable"]]["status"] == "unreadable" and rows["broken.png"]["status"] == "unreadable"
    assert rows[log["skipped"]]["skipped_at"] is not None
    undone = db.execute("SELECT i.path FROM actions a JOIN items i ON i.id = a.item WHERE a.undone = 1").fetchall()
    assert [Path(u[0]).name for u in undone] == [log["typo_in"]]  # the one Ctrl+Z

    on_disk = sorted(list_images([out]))  # one copy per labelled captcha, byte for byte, sources kept
    assert sorted(parse_label(f) for f in on_disk) == sorted(log["expected"].values())
    assert all(Path(r["saved_as"]).read_bytes() == (raw / n).read_bytes() for n, r in labelled.items())
    assert log["undone"] not in {parse_label(f) for f in on_disk} and len(list(raw.iterdir())) == 22
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in on_disk)  # no temporary files

    browser.find_element(page.by.ID, "train").click()  # trains on the labelled copies, then re-reads
    page.wait(300).until(lambda d: page.text("training").startswith(("trained", "training failed")))
    assert page.text("training").startswith("trained: proposals from model-1.pth"), page.text("training")
    status = json.load(urllib.request.urlopen(url + "api/status", timeout=10))
    assert status["model"] == "model-1.pth" and status["model_version"] == 2
