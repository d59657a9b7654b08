"""The labelling page's API (FastAPI's test client, no server process), its training progress,
the page's trainings (slow) and the script's command line."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from captcha_recognize.data.folders import list_images
from conftest import run_script
from captcha_recognize.data.labels import parse_label
from captcha_recognize.labelling.page import Session, Settings, create_app, models_dir, state_path
from captcha_recognize.labelling.trainer import TrainState, follow
from captcha_recognize.serve.process import free_port
from captcha_recognize.labelling.store import Store

CLIENT = {"client": "tab-a"}


def page_client(app) -> TestClient:
    """The page's API as the page itself calls it: on 127.0.0.1, with this start's token."""
    client = TestClient(app, base_url="http://127.0.0.1:8001")
    client.headers["X-Labelling-Token"] = app.state.token
    return client


def raw_folder(tmp_path: Path, digits_dir: Path, n: int = 6) -> Path:
    """``n`` captchas named ``img_<i>.png`` and one unreadable file."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, f in enumerate(list_images([digits_dir])[:n]):
        shutil.copy(f, raw / f"img_{i}.png")
    (raw / "broken.png").write_bytes(b"")
    return raw


@pytest.fixture
def page(tmp_path, digits_dir, fresh_ckpt):
    settings = Settings(mode="label", source=raw_folder(tmp_path, digits_dir), out=tmp_path / "out",
                        checkpoint=fresh_ckpt, alphabet="0123456789")
    with page_client(create_app(Session(settings))) as client:
        yield client


def test_the_page_is_served(page):
    r = page.get("/")
    assert r.status_code == 200 and 'id="label"' in r.text and "/api/claim" in r.text


def test_status_names_the_model_and_lists_unreadable_images(page):
    s = page.get("/api/status").json()
    assert s["model"] == "fresh.pth" and s["model_version"] == 1
    assert s["stats"]["remaining"] == 6 and s["unreadable"] == [{"name": "broken.png", "reason": "empty file"}]


def test_claimed_images_carry_proposals_and_are_served_as_png(page):
    items = page.post("/api/claim", json={**CLIENT, "n": 3}).json()["items"]
    assert len(items) == 3 and all(len(i["proposal"]) == 4 and 0 <= i["confidence"] <= 1 for i in items)
    assert [i["confidence"] for i in items] == sorted(i["confidence"] for i in items)
    r = page.get(items[0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"


def test_labels_are_saved_refused_with_a_message_and_undone(page, tmp_path):
    item = page.post("/api/claim", json={**CLIENT, "n": 1}).json()["items"][0]
    r = page.post("/api/label", json={**CLIENT, "id": item["id"], "label": "12.4"})
    assert r.status_code == 422 and r.json()["detail"].startswith("refused: '.' cannot be in a label")
    r = page.post("/api/label", json={**CLIENT, "id": item["id"], "label": "12a4"})
    assert r.status_code == 422 and "alphabet" in r.json()["detail"]
    r = page.post("/api/label", json={**CLIENT, "id": item["id"], "label": "1234", "proposal": item["proposal"]})
    assert r.status_code == 200 and r.json()["message"] == "saved 1234.png" and r.json()["stats"]["labelled"] == 1
    r = page.post("/api/label", json={"client": "tab-b", "id": item["id"], "label": "5678"})
    assert r.status_code == 409
    undone = page.post("/api/undo", json=CLIENT).json()
    assert undone["item"]["id"] == item["id"] and undone["label"] == "1234" and undone["stats"]["labelled"] == 0
    assert list((tmp_path / "out").iterdir()) == []


def test_skip_and_unreadable_through_the_api(page):
    a, b = page.post("/api/claim", json={**CLIENT, "n": 2}).json()["items"]
    assert page.post("/api/skip", json={**CLIENT, "id": a["id"]}).status_code == 200
    assert page.post("/api/unreadable", json={**CLIENT, "id": b["id"]}).status_code == 200
    s = page.get("/api/status").json()
    assert s["stats"]["remaining"] == 5 and {"name": b["name"], "reason": "marked on the page"} in s["unreadable"]
    rest = page.post("/api/claim", json={**CLIENT, "n": 10}).json()["items"]
    assert rest[-1]["id"] == a["id"]  # the skipped image comes back last


def test_review_keeps_names_with_skip_and_renames_with_a_label(tmp_path, digits_dir):
    folder = tmp_path / "labelled"
    shutil.copytree(digits_dir, folder)
    a, b = list_images([folder])[:2]
    session = Session(Settings(mode="review", out=folder))
    session.store.add_review([{"path": a, "label": parse_label(a), "prediction": "9999", "confidence": 0.9},
                              {"path": b, "label": parse_label(b), "prediction": "8888", "confidence": 0.5}])
    with page_client(create_app(session)) as page:
        assert page.get("/api/status").json()["mode"] == "review"
        first, second = page.post("/api/claim", json={**CLIENT, "n": 2}).json()["items"]
        assert (first["name"], first["named"], first["proposal"]) == (a.name, parse_label(a), "9999")
        assert page.post("/api/skip", json={**CLIENT, "id": first["id"]}).json()["message"] == f"kept {a.name}"
        r = page.post("/api/label", json={**CLIENT, "id": second["id"], "label": "8888"})
        assert r.json()["message"] == "saved 8888.png" and r.json()["stats"]["renamed"] == 1
        assert a.exists() and not b.exists() and (folder / "8888.png").exists()
        assert page.get(second["url"]).status_code == 200  # the renamed file is still shown
        assert page.post("/api/train").status_code == 409


def test_training_refuses_an_empty_output(page):
    r = page.post("/api/train")
    assert r.status_code == 409 and "nothing labelled" in r.json()["detail"]


def test_training_progress_is_read_from_the_training_events():
    s = TrainState("running")
    follow(json.dumps({"event": "start", "epochs": 32, "text": "cnn: 40 training / 4 validation images, ..."}), s)
    assert (s.epochs, s.message) == (32, "starting")
    follow("epoch 3/32 loss 1.2345 | sequence 39/40 (97.5%)", s)  # printed text is no event: ignored
    follow(json.dumps({"event": "epoch", "epoch": 3, "epochs": 32, "loss": 1.2345, "sequence_accuracy": 0.95}), s)
    assert (s.epoch, s.epochs, s.accuracy, s.message) == (3, 32, 95.0, "epoch 3/32")
    follow(json.dumps({"event": "error", "text": "error: labels of different lengths"}), s)
    assert s.message == "error: labels of different lengths"


@pytest.mark.slow
def test_the_page_follows_the_events_a_real_training_writes(digits_dir, tmp_path):
    r = run_script("torch_model_train.py", "--data", str(digits_dir), "--epochs", "2", "--out", str(tmp_path / "m.pth"),
                   "--plot", "none", "--events", "-")
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]  # standard output holds events only
    assert "epoch 2/2 loss" in r.stderr  # the log went to standard error
    s = TrainState("running")
    for line in r.stdout.splitlines():
        follow(line, s)
    assert events[-1] == "done" and events.count("epoch") == 2 and "calibrated" in events
    assert (s.epoch, s.epochs, s.message) == (2, 2, "epoch 2/2") and 0 <= s.accuracy <= 100
    bad = run_script("torch_model_train.py", "--data", str(tmp_path / "none"), "--events", "-")
    assert bad.returncode == 1 and json.loads(bad.stdout.splitlines()[-1])["event"] == "error"
    assert bad.stderr.strip().splitlines() == [json.loads(bad.stdout.splitlines()[-1])["text"]]  # said once


def test_state_and_models_live_next_to_the_output(tmp_path):
    assert state_path(tmp_path / "labelled") == tmp_path / "labelled.sqlite"
    assert models_dir(tmp_path / "labelled") == tmp_path / "labelled.models"


@pytest.mark.parametrize("argv, message", [
    ([], "give a folder to label"),
    (["RAW"], "--out DIR is needed"),
    (["RAW", "--out", "RAW"], "another folder"),
    (["RAW", "--out", "OUT", "--review", "OUT"], "give a folder to label"),
    (["RAW", "--out", "OUT", "--checkpoint", "missing.pth"], "no such checkpoint"),
    (["missing", "--out", "OUT"], "no such folder"),
])
def test_bad_command_lines_are_one_line_errors(tmp_path, argv, message, capsys):
    from captcha_recognize.cli.label import parse_args
    (tmp_path / "RAW").mkdir()
    argv = [str(tmp_path / a) if a.isupper() or a == "missing" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("case, code, message", [
    ("empty", 1, "no images to label in"), ("bad checkpoint", 2, "not a readable PyTorch checkpoint"),
    ("busy port", 2, "--port: cannot listen on 127.0.0.1:"),
])
def test_what_would_stop_the_page_is_one_line_before_it_starts(tmp_path, digits_dir, capsys, monkeypatch, case,
                                                                 code, message):
    import socket

    from captcha_recognize.cli import label as torch_model_label
    raw = tmp_path / "raw"
    raw.mkdir()
    if case != "empty":
        shutil.copy(sorted(digits_dir.iterdir())[0], raw / "a.png")
    argv = [str(raw), "--out", str(tmp_path / "out")]
    if case == "bad checkpoint":
        (tmp_path / "x.pth").write_text("not a checkpoint")
        argv += ["--checkpoint", str(tmp_path / "x.pth")]
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("the page started"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1] if case == "busy port" else free_port()
        assert torch_model_label.main([*argv, "--port", str(port)]) == code
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [out.err.strip()] and message in out.err and not out.out
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.sqlite").exists()  # no state written


@pytest.mark.slow
def test_the_train_button_trains_on_the_output_and_reorders_the_rest(tmp_path, digits_dir, fresh_ckpt):
    settings = Settings(mode="label", source=raw_folder(tmp_path, digits_dir, 40), out=tmp_path / "out",
                        checkpoint=fresh_ckpt, train_args=["--epochs", "2"])
    with page_client(create_app(session := Session(settings))) as page:
        truth = {f"img_{i}.png": parse_label(f) for i, f in enumerate(list_images([digits_dir])[:40])}
        for _ in range(3):
            for item in page.post("/api/claim", json={**CLIENT, "n": 8}).json()["items"]:
                assert page.post("/api/label", json={**CLIENT, "id": item["id"],
                                                     "label": truth[item["name"]]}).is_success
        before = {r.id: r.confidence for r in session.store.todo()}
        assert page.post("/api/train").is_success and page.post("/api/train").status_code == 409
        deadline = time.time() + 300
        while (t := page.get("/api/status").json())["training"]["state"] == "running" and time.time() < deadline:
            time.sleep(1)
        assert t["training"]["state"] == "done", t["training"]
        assert t["model"] == "model-1.pth" and t["model_version"] == 2 and "read 16 images" in t["training"]["message"]
    assert (models_dir(tmp_path / "out") / "model-1.pth").is_file()
    assert "epoch 2/2" in (models_dir(tmp_path / "out") / "model-1.log").read_text()
    after = Store(state_path(tmp_path / "out"), "label", tmp_path / "out").todo()
    assert {r.id: r.confidence for r in after} != before  # proposals re-read by the new model
    assert [r.confidence for r in after] == sorted(r.confidence for r in after)
    with page_client(create_app(Session(Settings(mode="label", source=settings.source, out=settings.out)))) as page:
        assert page.get("/api/status").json()["model"] == "model-1.pth"  # a restart resumes with it


@pytest.mark.slow
def test_review_mode_cross_reads_and_queues_the_disagreements(tmp_path, digits_dir):
    from captcha_recognize.cli.label import cross_read_into, parse_args
    folder = tmp_path / "labelled"
    shutil.copytree(digits_dir, folder)
    args = parse_args(["--review", str(folder), "--folds", "2", "--train-args", "--epochs 1"])
    session = Session(Settings(mode="review", out=folder))
    n = cross_read_into(session, args)
    rows = session.store.todo()
    assert len(rows) == n and all(r.named != r.proposal for r in rows)
    assert [r.confidence for r in rows] == sorted((r.confidence for r in rows), reverse=True)


def test_another_site_can_neither_change_nor_read_the_state(page):
    token = page.headers.pop("X-Labelling-Token")
    assert f'content="{token}"' in page.get("/").text  # the page carries this start's token
    claim = {**CLIENT, "n": 1}
    r = page.post("/api/train", json={})
    assert r.status_code == 403 and "token" in r.json()["detail"]  # a form or fetch from any site: no token
    assert page.post("/api/claim", json=claim, headers={"X-Labelling-Token": "guess"}).status_code == 403
    r = page.post("/api/claim", json=claim, headers={"X-Labelling-Token": token, "Origin": "https://evil.example"})
    assert r.status_code == 403 and "another site" in r.json()["detail"]
    rebound = page.get("/api/status", headers={"Host": "evil.example:8001"})  # DNS rebinding: its name, our address
    assert rebound.status_code == 403 and "127.0.0.1 or localhost only" in rebound.json()["detail"]
    assert page.post("/api/claim", json=claim, headers={"X-Labelling-Token": token,
                                                       "Origin": "http://127.0.0.1:8001"}).status_code == 200
    assert page.post(f"/api/release?token={token}", json=CLIENT).status_code == 200  # the page's beacon
    assert page.get("/api/status", headers={"Host": "localhost:8001"}).status_code == 200


def test_impossible_ids_and_labels_too_long_for_a_file_name_are_4xx(tmp_path, digits_dir):
    settings = Settings(mode="label", source=raw_folder(tmp_path, digits_dir), out=tmp_path / "out")  # any letters
    with page_client(create_app(Session(settings))) as page:
        item = page.post("/api/claim", json={**CLIENT, "n": 1}).json()["items"][0]
        for bad in (2 ** 63, -1, 10 ** 30):
            assert page.post("/api/skip", json={**CLIENT, "id": bad}).status_code == 422
            assert page.get(f"/api/image/{bad}").status_code == 422
        assert page.post("/api/claim", json={**CLIENT, "keep": [2 ** 64]}).status_code == 422
        r = page.post("/api/label", json={**CLIENT, "id": item["id"], "label": "𝟗" * 90})  # 360 bytes as UTF-8
        assert r.status_code == 422 and "too long for a file name (360 bytes" in r.json()["detail"]
        assert page.post("/api/label", json={**CLIENT, "id": item["id"], "label": "𝟗" * 50}).status_code == 200


def test_a_source_gone_or_an_output_that_cannot_be_written_is_a_409_and_nothing_is_lost(tmp_path, digits_dir):
    from captcha_recognize.labelling import store as labelstore
    settings = Settings(mode="label", source=raw_folder(tmp_path, digits_dir), out=tmp_path / "out")
    with page_client(create_app(session := Session(settings))) as page:
        first, second = page.post("/api/claim", json={**CLIENT, "n": 2}).json()["items"]
        source = session.store.item(first["id"]).path
        source.unlink()  # deleted while shown
        r = page.post("/api/label", json={**CLIENT, "id": first["id"], "label": "1234"})
        assert r.status_code == 409 and f"{source.name} is no longer in" in r.json()["detail"]
        def read_only(src, dest):  # the output folder on a read-only disk (root writes a chmod-ed folder)
            raise PermissionError(13, "Permission denied", str(dest))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(labelstore, "copy_atomically", read_only)
            r = page.post("/api/label", json={**CLIENT, "id": second["id"], "label": "5678"})
        assert r.status_code == 409 and r.json()["detail"].endswith("Permission denied; nothing was saved")
        assert page.post("/api/label", json={**CLIENT, "id": second["id"], "label": "5678"}).status_code == 200
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["5678.png"]


HUNG_COPY = """
import sys, time
from captcha_recognize.labelling import store
def hung(src, dest):  # a label's copy is under way when the page is killed
    dest.with_name(store.TMP_PREFIX + "killed.tmp").write_bytes(src.read_bytes()[:10])
    print("copying", flush=True)
    time.sleep(120)
store.copy_atomically = hung
from captcha_recognize.cli.label import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_page_killed_during_a_save_starts_again_with_nothing_lost_or_half_written(tmp_path, digits_dir, capsys):
    import re
    import subprocess
    import sys
    import threading
    import httpx
    from captcha_recognize.runtime import child_env
    raw, out, port = raw_folder(tmp_path, digits_dir), tmp_path / "out", free_port()
    url = f"http://127.0.0.1:{port}"
    page = subprocess.Popen([sys.executable, "-c", HUNG_COPY, str(raw), "--out", str(out), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                token = re.search(r'name="labelling-token" content="([^"]+)"', httpx.get(url).text).group(1)
                break
            except httpx.TransportError:
                assert page.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        headers = {"X-Labelling-Token": token}
        item = httpx.post(f"{url}/api/claim", json={**CLIENT, "n": 1}, headers=headers).json()["items"][0]

        def label_it() -> None:  # its answer never comes: the page is killed while it saves
            with contextlib.suppress(httpx.TransportError):
                httpx.post(f"{url}/api/label", json={**CLIENT, "id": item["id"], "label": "1234"}, headers=headers,
                           timeout=60)
        threading.Thread(target=label_it, daemon=True).start()
        while (line := page.stdout.readline()) and line.strip() != "copying":
            pass
    finally:
        page.kill()
        page.wait(30)
    assert [f.name for f in out.iterdir()] == [".labelling-killed.tmp"]  # half a copy, the state says 'saving'
    settings = Settings(mode="label", source=raw, out=out, alphabet="0123456789")
    with page_client(create_app(Session(settings))) as client:
        assert "recovered 1 image(s) from an interrupted save or undo" in capsys.readouterr().err
        assert list(out.iterdir()) == []  # the half copy is gone
        assert client.get("/api/status").json()["stats"]["remaining"] == 6  # the image is back to label
        again = client.post("/api/claim", json={**CLIENT, "n": 6}).json()["items"]
        assert item["id"] in [i["id"] for i in again]
        r = client.post("/api/label", json={**CLIENT, "id": item["id"], "label": "1234"})
        assert r.status_code == 200 and [f.name for f in out.iterdir()] == ["1234.png"]
