"""The recognition service: the real server (uvicorn in a subprocess on a free 127.0.0.1 port)
exercised over HTTP, plus the batcher and the model registry in-process."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from conftest import fresh_checkpoint
from captcha_recognize.data.preprocess import Preprocess
from captcha_recognize.data.folders import list_images
from captcha_recognize.data.labels import parse_label
from captcha_recognize.reading.recognizer import CaptchaRecognizer, Prediction
from captcha_recognize.reading.spec import BASE_CHECKPOINT
from captcha_recognize.serve.batcher import Batcher
from captcha_recognize.serve.schemas import RecognizeResponse
from captcha_recognize.serve.registry import Registry
from captcha_recognize.reading.calibration import ACCEPT_NONE
from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint, seal
from captcha_recognize.serve.requests import RequestError, parse_multipart
from captcha_recognize.serve.config import ServeConfig, config_to_env
from captcha_recognize.serve.front import send_json
from captcha_recognize.serve.process import server_process

MAX_BYTES, MAX_PIXELS, MAX_IMAGES = 200_000, 1_000_000, 8


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


@pytest.fixture(scope="module")
def models(tmp_path_factory, calibrated_ckpt) -> dict[str, Path]:
    """Models of different shapes and formats: the calibrated shipped CRNN (.pth), a fresh CRNN with an
    ink mask (.onnx), and a fresh CNN whose file the hot-reload test replaces."""
    from captcha_recognize.reading.export import export_onnx
    d = tmp_path_factory.mktemp("served")
    crnn = fresh_checkpoint(d / "crnn.pth", arch="crnn", alphabet="abcdefgh123",
                            preprocess=Preprocess(100, 32, 1, ink=((140, 140, 140),)))  # one ink mask after the grey
    return {"digits": shutil.copy(calibrated_ckpt, d / "digits.pth"), "v2": export_onnx(crnn, d / "v2.onnx"),
            "live": fresh_checkpoint(d / "live.pth", seed=0)}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("log") / "server.log"


@pytest.fixture(scope="module")
def server(models, server_log):
    args = [a for name, path in models.items() for a in ("--model", f"{name}={path}")]
    args += ["--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS), "--max-images", str(MAX_IMAGES),
             "--max-wait-ms", "20", "--reload-interval", "0.2", "--no-access-log"]
    with server_process(args, server_log) as (url, _):
        yield url


@pytest.fixture(scope="module")
def images(digits_dir) -> list[Path]:
    return list_images([digits_dir])


def expected(path: Path, files: list[Path]) -> list[Prediction]:
    return CaptchaRecognizer(path).predict_batch_details(files)


def assert_reads_as(results: list[dict], want: list[Prediction], model: str) -> None:
    assert [r["text"] for r in results] == [w.text for w in want]
    assert [r["confidence"] for r in results] == pytest.approx([w.confidence for w in want], rel=1e-4, abs=1e-9)
    assert [r["accept"] for r in results] == [w.accept for w in want]
    assert {r["model"] for r in results} == {model}


@pytest.mark.slow
def test_both_input_forms_and_several_models(server, models, images):
    files = images[:3]
    digits, v2 = expected(models["digits"], files), expected(models["v2"], files)
    r = httpx.post(f"{server}/v1/recognize", files=[("file", (f.name, f.read_bytes())) for f in files])
    assert r.status_code == 200, r.text
    assert_reads_as(r.json()["results"], digits, "digits")  # the first model is the default
    assert RecognizeResponse.model_validate(r.json()).model_dump(exclude_unset=True) == r.json()  # as documented
    timing = r.json()["timing"]
    assert timing["batch_images"] >= 3 and timing["total_ms"] >= timing["decode_ms"] > 0
    r = httpx.post(f"{server}/v1/recognize", files=[("image", (files[0].name, files[0].read_bytes()))],
                   data={"model": "v2"})
    assert_reads_as(r.json()["results"], v2[:1], "v2")
    one = httpx.post(f"{server}/v1/recognize/", json={"image": b64(files[1].read_bytes()), "model": "v2"})
    assert_reads_as(one.json()["results"], v2[1:2], "v2")
    data_url = "data:image/png;base64," + b64(files[2].read_bytes())
    many = httpx.post(f"{server}/v1/recognize?model=digits", json={"image": [b64(f.read_bytes()) for f in files[:2]]
                                                                    + [data_url]})
    assert_reads_as(many.json()["results"], digits, "digits")
    listed = {m["name"]: m for m in httpx.get(f"{server}/v1/models").json()}
    assert listed["digits"] | {"loaded_at": None} == {
        "name": "digits", "arch": "crnn", "alphabet": "0123456789", "length": 4, "format": "pth",
        "input": {"width": 50, "height": 22, "channels": 1, "ink": []}, "loaded_at": None, "error": None,
        "temperature": CaptchaRecognizer(models["digits"]).temperature,
        "threshold": CaptchaRecognizer(models["digits"]).threshold}
    assert listed["v2"]["arch"] == "crnn" and listed["v2"]["format"] == "onnx" and listed["v2"]["length"] is None
    assert listed["v2"]["input"] == {"width": 100, "height": 32, "channels": 1, "ink": [[140, 140, 140]]}
    assert listed["v2"]["threshold"] is None
    assert (listed["live"]["arch"], listed["live"]["length"], listed["live"]["input"]["channels"]) == ("cnn", 4, 3)


@pytest.mark.slow
def test_calibrated_confidence_and_accept_on_a_trained_checkpoint(server, models, images):
    from captcha_recognize.data.arrays import preprocess
    rec = CaptchaRecognizer(models["digits"])
    assert rec.temperature != 1.0 and rec.threshold is not None  # calibrated by its training run
    got = [g for i in range(0, len(images), MAX_IMAGES) for g in httpx.post(
        f"{server}/v1/recognize", json={"image": [b64(f.read_bytes()) for f in images[i:i + MAX_IMAGES]]}
    ).json()["results"]]
    logits = rec.logits(preprocess(images, rec.preprocess))  # (64, P, K)
    _, raw = rec.converter.decode(logits)  # temperature 1: what an uncalibrated server would say
    _, calibrated = rec.converter.decode(logits, rec.temperature)
    assert [g["confidence"] for g in got] == pytest.approx(calibrated, rel=1e-4)
    assert max(abs(a - b) for a, b in zip(calibrated, raw)) > 0.05
    assert [g["accept"] for g in got] == [c >= rec.threshold for c in calibrated]
    assert 0 < sum(g["accept"] for g in got) < len(got)  # some answers trusted, some not


@pytest.mark.slow
def test_64_concurrent_requests_each_get_their_own_answer(server, models, images):
    assert len(images) == 64
    want = expected(models["digits"], images)
    assert len({w.text for w in want}) > 50  # different images, different answers: a mix-up would show

    async def one(client: httpx.AsyncClient, f: Path) -> dict:
        r = await client.post(f"{server}/v1/recognize", files={"file": (f.name, f.read_bytes())})
        assert r.status_code == 200, r.text
        return r.json()

    async def all_at_once() -> list[dict]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(one(client, f) for f in images))
    before = httpx.get(f"{server}/metrics").text
    answers = asyncio.run(all_at_once())
    assert_reads_as([a["results"][0] for a in answers], want, "digits")
    right = sum(a["results"][0]["text"] == parse_label(f) for a, f in zip(answers, images))
    assert right >= 56  # and they are the right texts: the model reads its own kind of captcha
    assert max(a["timing"]["batch_images"] for a in answers) > 1  # requests shared forward passes
    after = httpx.get(f"{server}/metrics").text
    passes = metric(after, "captcha_batch_images_count", model="digits") - \
        metric(before, "captcha_batch_images_count", model="digits")
    assert metric(after, "captcha_images_total", model="digits") - \
        metric(before, "captcha_images_total", model="digits") == 64
    assert 1 <= passes < 64


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 255 if mode == "1" else "white").save(buf, "PNG")
    return buf.getvalue()


async def chunks(data: bytes, n: int):
    """A request body sent in ``n`` chunks, without a Content-Length."""
    for _ in range(n):
        yield data


def bad_requests(image: bytes) -> list[tuple[str, dict, int, str]]:
    """(what, httpx.post arguments, status, part of the error message)"""
    json_type = {"Content-Type": "application/json"}
    bomb = png((2000, 2000), "1")  # 4 million pixels in a few kilobytes
    assert len(bomb) < MAX_BYTES
    return [
        ("empty body", {"content": b"", "headers": json_type}, 400, "empty request body"),
        ("not an image", {"files": {"file": ("a.png", b"hello, not an image")}}, 400, "not an image"),
        ("truncated image", {"files": {"file": ("a.png", image[:len(image) // 2])}}, 400, "truncated or corrupt"),
        ("empty file", {"files": {"file": ("a.png", b"")}}, 400, "is empty"),
        ("bad base64", {"json": {"image": "not base64!"}}, 400, "not valid base64"),
        ("malformed JSON", {"content": b'{"image": ', "headers": json_type}, 400, "malformed JSON"),
        ("JSON without image", {"json": {"picture": b64(image)}}, 400, "bad JSON request: image"),
        ("unknown model", {"json": {"image": b64(image), "model": "nope"}}, 404, "unknown model 'nope'"),
        ("a path as model", {"json": {"image": b64(image), "model": "../digits.pth"}}, 404, "unknown model"),
        ("over --max-bytes", {"files": {"file": ("a.png", b"\0" * MAX_BYTES)}}, 413, f"limit of {MAX_BYTES} bytes"),
        ("over --max-bytes, chunked", {"content": chunks(b"x" * 65536, 4), "headers": json_type}, 413,
         f"limit of {MAX_BYTES} bytes"),
        ("decompression bomb", {"files": {"file": ("a.png", bomb)}}, 413, "2000x2000 pixels is over the limit"),
        ("too many images", {"files": [("file", ("a.png", image))] * (MAX_IMAGES + 1)}, 413, "too many images"),
        ("too many in JSON", {"json": {"image": [b64(image)] * (MAX_IMAGES + 1)}}, 413, "too many images"),
        ("no file", {"content": b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ndigits\r\n--b--\r\n',
                     "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400, "no image"),
        ("other content type", {"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported content type"),
    ]


@pytest.mark.slow
def test_bad_input_is_one_clear_4xx_and_other_requests_are_unaffected(server, models, images):
    image = images[0].read_bytes()
    cases = bad_requests(image)
    want = expected(models["digits"], images[:16])

    async def bad(client: httpx.AsyncClient, what: str, kwargs: dict, status: int, phrase: str) -> None:
        r = await client.post(f"{server}/v1/recognize", **kwargs)
        assert r.status_code == status, (what, r.text)
        assert phrase in r.json()["error"] and len(r.json()) == 1, (what, r.text)
        assert "\n" not in r.json()["error"]

    async def good(client: httpx.AsyncClient, f: Path) -> dict:
        r = await client.post(f"{server}/v1/recognize", json={"image": b64(f.read_bytes())})
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    async def mixed() -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            results = await asyncio.gather(*(bad(client, *c) for c in cases), *(good(client, f) for f in images[:16]))
            return results[len(cases):]
    assert_reads_as(asyncio.run(mixed()), want, "digits")
    assert httpx.get(f"{server}/healthz").status_code == 200
    r = httpx.post(f"{server}/v1/recognize", files={"file": ("a.png", image)})
    assert r.status_code == 200 and r.json()["results"][0]["text"] == want[0].text


@pytest.mark.slow
def test_health_docs_and_metrics(server, images):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json() == {"status": "ready", "models": ["digits", "v2", "live"]}
    op = httpx.get(f"{server}/openapi.json").json()["paths"]["/v1/recognize"]["post"]  # documented, typed
    assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecognizeResponse")
    wrong = httpx.get(f"{server}/v1/recognize")
    assert wrong.status_code == 405 and "POST the images" in wrong.json()["error"]
    assert httpx.get(f"{server}/v1/nope").json() == {"error": "Not Found"}  # the same shape on every path
    assert httpx.post(f"{server}/v1/models").json() == {"error": "Method Not Allowed"}
    assert "swagger" in httpx.get(f"{server}/docs").text.lower()
    httpx.post(f"{server}/v1/recognize", content=b"")
    httpx.post(f"{server}/v1/recognize", files={"file": ("a.png", images[0].read_bytes())})
    text = httpx.get(f"{server}/metrics").text
    assert metric(text, "captcha_requests_total", path="/v1/recognize", status="400") >= 1
    assert metric(text, "captcha_requests_total", path="/healthz", status="200") >= 1
    assert metric(text, "captcha_request_seconds_count", path="/v1/recognize") >= 1
    assert "captcha_batch_images_bucket" in text and "captcha_images_total" in text
    with socket.create_connection(httpx.URL(server).netloc.decode().split(":")) as gone:  # leaves mid-body
        gone.sendall(b"POST /v1/recognize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"image\": ")
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{server}/metrics").text, "captcha_requests_total", path="/v1/recognize",
                 status="499") < 1:
        assert time.monotonic() < deadline, "a client that left mid-request is not counted as 499"
        time.sleep(0.1)


def test_an_answer_that_is_not_valid_json_is_never_sent():
    sent = []

    async def send(message: dict) -> None:
        sent.append(message)
    with pytest.raises(ValueError):
        asyncio.run(send_json(send, 200, {"confidence": float("nan")}))
    assert sent == []


@pytest.mark.slow
def test_the_api_key_guards_every_endpoint_but_the_health_checks_and_metrics_sum_the_workers(fresh_ckpt, images,
                                                                                              tmp_path):
    key = {"CAPTCHA_TEST_KEY": "s3cret-key"}
    args = ["--model", f"m={fresh_ckpt}", "--api-key-env", "CAPTCHA_TEST_KEY", "--workers", "2"]
    with server_process(args, tmp_path / "log", env=key) as (url, _):
        for path in ("/healthz", "/readyz"):
            assert httpx.get(url + path).status_code == 200
        for path in ("/v1/models", "/metrics", "/docs", "/openapi.json"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert httpx.get(url + path, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        image = {"file": ("a.png", images[0].read_bytes())}
        r = httpx.post(f"{url}/v1/recognize", files=image)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        for _ in range(8):  # new connections, so both worker processes answer
            r = httpx.post(f"{url}/v1/recognize", files=image, headers={"Authorization": "Bearer s3cret-key"})
            assert r.status_code == 200 and r.json()["results"][0]["model"] == "m"
        for _ in range(6):  # whichever worker answers the scrape, it counts the images both read
            text = httpx.get(url + "/metrics", headers={"X-API-Key": "s3cret-key"}).text
            assert re.search(r'^captcha_images_total\{model="m"\} 8\.0$', text, re.M), text
    log = (tmp_path / "log").read_text()
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2 and "died" not in log


def test_bad_start_flags_are_one_line_errors(fresh_ckpt, tmp_path, capsys, monkeypatch):
    from captcha_recognize.cli import serve as torch_model_serve
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nope")
    assert torch_model_serve.main(["--model", f"m={bad}"]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    monkeypatch.delenv("CAPTCHA_UNSET_KEY", raising=False)
    assert torch_model_serve.main(["--model", f"m={fresh_ckpt}", "--api-key-env", "CAPTCHA_UNSET_KEY"]) == 2
    assert "CAPTCHA_UNSET_KEY" in capsys.readouterr().err
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("the server started"))
    with socket.socket() as busy:  # another server has the port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert torch_model_serve.main(["--model", f"m={fresh_ckpt}", "--host", "127.0.0.1", "--port", port]) == 2
    assert capsys.readouterr().err.startswith(f"error: --port: cannot listen on 127.0.0.1:{port}")
    for flag, message in [("../x=m.pth", "model name '../x'"), ("m", "expected NAME=PATH"),
                          ("m=model.txt", "expected a .pth checkpoint or an .onnx export")]:
        with pytest.raises(SystemExit):
            torch_model_serve.parse_args(["--model", flag])
        assert message in capsys.readouterr().err
    # "base" names the shipped base model, as it does for torch_model_predict.py --checkpoint
    base = torch_model_serve.parse_args(["--model", "zero=base"]).model
    assert base == [("zero", str(BASE_CHECKPOINT))]


def test_each_worker_runs_a_pass_per_core_it_has_unless_told(monkeypatch):
    from captcha_recognize.cli import serve as torch_model_serve
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    passes = lambda *flags: torch_model_serve.config(torch_model_serve.parse_args(list(flags))).forward_passes()  # noqa: E731
    assert passes() == 8
    assert passes("--workers", "2") == 4
    assert passes("--workers", "16") == 1
    assert passes("--workers", "2", "--passes", "3") == 3
    assert passes("--device", "cuda") == 1
    # each --workers process rebuilds its configuration from the environment, workers included
    cfg = torch_model_serve.config(torch_model_serve.parse_args(["--workers", "4"]))
    assert ServeConfig(**json.loads(config_to_env(cfg))).forward_passes() == 2


def replace_atomically(src: Path | bytes, dst: Path) -> None:
    """What training does: write a temporary file, then rename it over ``dst``."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_bytes(src if isinstance(src, bytes) else src.read_bytes())
    os.replace(tmp, dst)


@pytest.mark.slow
def test_a_replaced_model_file_is_reloaded_during_traffic_without_a_failed_request(server, server_log, models,
                                                                                   images, tmp_path):
    live = models["live"]
    a, b = shutil.copy(live, tmp_path / "a.pth"), fresh_checkpoint(tmp_path / "b.pth", seed=1)
    files = images[:16]
    want_a, want_b = [p.text for p in expected(a, files)], [p.text for p in expected(b, files)]
    assert sum(x != y for x, y in zip(want_a, want_b)) >= 12
    seen: list[tuple[float, int, int, str]] = []  # (time, image, status, text)

    async def traffic(client: httpx.AsyncClient, stop: asyncio.Event, k: int) -> None:
        i, deadline = k, time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            r = await client.post(f"{server}/v1/recognize?model=live",
                                  files={"file": ("x.png", files[i % 16].read_bytes())})
            seen.append((time.monotonic(), i % 16, r.status_code, r.json()["results"][0]["text"]
                         if r.status_code == 200 else r.text))
            i += 4

    async def until(client: httpx.AsyncClient, ok, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = {m["name"]: m for m in (await client.get(f"{server}/v1/models")).json()}["live"]
            if ok(info):
                return time.monotonic()
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out; /v1/models says {info}")

    async def scenario() -> tuple[float, float, dict]:
        async with httpx.AsyncClient(timeout=30) as client:
            stop = asyncio.Event()
            clients = [asyncio.create_task(traffic(client, stop, k)) for k in range(4)]
            first = await until(client, lambda m: True)
            await asyncio.sleep(1.0)
            loaded = {m["name"]: m for m in (await client.get(f"{server}/v1/models")).json()}["live"]["loaded_at"]
            replace_atomically(b, live)
            swapped = await until(client, lambda m: m["loaded_at"] != loaded)
            await asyncio.sleep(1.0)
            replace_atomically(b"not a checkpoint at all", live)
            broken = await until(client, lambda m: m["error"] is not None)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*clients)
            info = {m["name"]: m for m in (await client.get(f"{server}/v1/models")).json()}["live"]
            assert first < swapped < broken
            return swapped, broken, info

    swapped, broken, info = asyncio.run(scenario())
    assert all(status == 200 for _, _, status, _ in seen), [s for s in seen if s[2] != 200][:3]
    assert all(text in (want_a[i], want_b[i]) for _, i, _, text in seen)  # always one version, never a mix
    assert any(t == want_a[i] != want_b[i] for _, i, _, t in seen)  # version A served first ...
    after = [(i, t) for when, i, _, t in seen if when > swapped + 0.5]
    assert after and all(t == want_b[i] for i, t in after)  # ... then B, also after the broken file
    assert any(when > broken for when, *_ in seen)
    assert "not a readable PyTorch checkpoint" in info["error"]
    log = server_log.read_text()
    assert "reloaded model live" in log and "previous version keeps serving" in log


def test_multipart_bodies_are_split_into_their_files_and_model_field():
    tricky = b"\x89PNG\r\n\r\n--not-the-boundary\r\n\r\nrest"  # line breaks and dashes inside a file
    req = httpx.Request("POST", "http://127.0.0.1/", files=[("file", ("a.png", tricky)), ("other", ("b.png", b"x"))],
                        data={"model": "v2", "answer": "1"})
    fields = {"model": "v2", "answer": "1"}
    assert parse_multipart(req.headers["content-type"], req.read(), 8) == ([tricky, b"x"], fields)
    framed = (b'preamble\r\n--b \r\nContent-Disposition: form-data; name="f"; filename="c.png"\r\n\r\nDATA'
              b"\r\n--b--\r\nepilogue")
    assert parse_multipart('multipart/form-data; boundary="b"', framed, 8) == ([b"DATA"], {})
    for content_type, body, phrase in [
            ("multipart/form-data", framed, "no boundary"),
            ("multipart/form-data; boundary=b", framed.replace(b"--b--", b"--c--"), "does not open and close"),
            ("multipart/form-data; boundary=b", b"--b\r\nno blank line\r\n--b--", "without its headers"),
            ("multipart/form-data; boundary=b", b"--bb\r\nX: y\r\n\r\nDATA\r\n--b--", "without its headers")]:
        with pytest.raises(RequestError, match=phrase):
            parse_multipart(content_type, body, 8)
    with pytest.raises(RequestError, match="too many images"):
        parse_multipart(req.headers["content-type"], req.read(), 1)


class FakeRecognizer:
    """Reads each image (one byte) as its value; records the size of each forward pass."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def prepare(self, data: bytes, max_pixels: int | None = None) -> np.ndarray:
        if data == b"?":
            raise UnidentifiedImageError("not an image")
        if data == b"!":
            raise NotImplementedError("a decoder's own error")
        return np.full((1, 2, 2), data[0], np.uint8)

    def predict_arrays(self, batch):
        self.passes.append(len(batch))
        time.sleep(0.01)
        return [(str(int(a[0, 0, 0])), 0.5) for a in batch]

    def accepts(self, confidence: float) -> bool:
        return confidence > 0.4


def test_the_batcher_gathers_concurrent_jobs_and_returns_each_its_own():
    rec, other = FakeRecognizer(), FakeRecognizer()
    seen = []

    async def go():
        batcher = Batcher(max_batch=8, max_wait=0.05, on_batch=seen.append)
        batcher.start()
        jobs = [[bytes([10 * k + i]) for i in range(k % 3 + 1)] for k in range(10)]
        results = await asyncio.gather(*(batcher.submit(j, rec) for j in jobs), batcher.submit([b"?"], rec),
                                       batcher.submit([b"!"], rec), batcher.submit([bytes([99])], other),
                                       return_exceptions=True)
        await batcher.stop()
        return jobs, results
    jobs, results = asyncio.run(go())
    for job, res in zip(jobs, results):
        assert [p.text for p in res.predictions] == [str(a[0]) for a in job]
        assert all(p.accept for p in res.predictions)
    bad, odd = results[len(jobs):len(jobs) + 2]  # decoded in a pass with others: only its own request fails
    assert isinstance(bad, RequestError) and bad.status == 400 and "not an image" in bad.message
    assert isinstance(odd, RequestError) and odd.status == 400 and "cannot be decoded" in odd.message
    assert sum(seen) == sum(len(j) for j in jobs) + 1 and max(seen) <= 8 and len(seen) < 11
    assert set(rec.passes) <= {1, 2, 4, 8} and len(rec.passes) == len(seen) - 1  # padded to few shapes
    assert other.passes == [1] and results[-1].predictions[0].text == "99"  # another model version: its own pass
    assert all(r.batch_images in seen for r in results if not isinstance(r, Exception))  # real images, not padding


def test_the_batcher_runs_a_lone_request_at_once_and_a_pass_waits_for_latecomers_under_concurrency():
    rec = FakeRecognizer()

    async def go():
        batcher = Batcher(max_batch=8, max_wait=0.5, on_batch=lambda n: None)
        batcher.start()
        t0 = time.perf_counter()
        await batcher.submit([b"\x01"], rec)  # one client: each request runs as it comes, without the wait
        await batcher.submit([b"\x02"], rec)
        assert time.perf_counter() - t0 < 0.25
        await asyncio.gather(*(batcher.submit([bytes([k])], rec) for k in range(3)))  # concurrent clients
        late = asyncio.create_task(batcher.submit([b"\x05"], rec))
        await asyncio.sleep(0.05)
        await asyncio.gather(late, batcher.submit([b"\x06"], rec))  # joins the waiting request's pass
        await batcher.stop()
    asyncio.run(go())
    assert rec.passes == [1, 1, 4, 2]


def test_a_pass_waits_only_until_it_holds_as_many_requests_as_the_last_pass_answered():
    rec = FakeRecognizer()

    async def go() -> tuple[float, float]:
        batcher = Batcher(max_batch=8, max_wait=0.3, on_batch=lambda n: None)
        batcher.start()
        await asyncio.gather(*(batcher.submit([bytes([k])], rec) for k in range(2)))  # a pass of two requests
        t0 = time.perf_counter()
        early = asyncio.create_task(batcher.submit([b"\x05"], rec))
        await asyncio.sleep(0.05)
        await asyncio.gather(early, batcher.submit([b"\x06"], rec))  # the second one completes the pass
        paired = time.perf_counter() - t0
        await asyncio.sleep(0.4)  # longer than max_wait: the clients of that pass are gone
        t0 = time.perf_counter()
        await batcher.submit([b"\x07"], rec)
        lone = time.perf_counter() - t0
        await batcher.stop()
        return paired, lone
    paired, lone = asyncio.run(go())
    assert paired < 0.2 and lone < 0.2  # neither waits out the max_wait of 0.3 s
    assert rec.passes == [2, 2, 1]


def test_a_pass_does_not_wait_for_the_clients_of_a_pass_still_running():
    rec = FakeRecognizer()

    async def go() -> float:
        batcher = Batcher(max_batch=8, max_wait=0.5, on_batch=lambda n: None, passes=2)
        batcher.start()
        await batcher.submit([b"\x01"], rec)  # the last pass to finish answered one request
        running = asyncio.gather(*(batcher.submit([bytes([k])], rec) for k in range(4)))  # fills one pass
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        await batcher.submit([b"\x09"], rec)  # on the other thread, without waiting for those four
        waited = time.perf_counter() - t0
        await running
        await batcher.stop()
        return waited
    assert asyncio.run(go()) < 0.25
    assert rec.passes == [1, 4, 1]


def test_several_passes_share_a_full_queue():
    rec = FakeRecognizer()

    async def go():
        batcher = Batcher(max_batch=8, max_wait=0.05, on_batch=lambda n: None, passes=2)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([bytes([k])], rec) for k in range(16)))
        await batcher.stop()
        return results
    assert [r.predictions[0].text for r in asyncio.run(go())] == [str(k) for k in range(16)]
    assert max(rec.passes) == 4 and sum(rec.passes) == 16  # 8 images at once, 4 a pass


def test_warming_decodes_and_runs_every_padded_size_on_each_forward_thread():
    rec, seen = FakeRecognizer(), []
    rec.preprocess = Preprocess(8, 4, 1)
    prepare = rec.prepare
    rec.prepare = lambda data, max_pixels=None: seen.append(threading.get_ident()) or prepare(data, max_pixels)

    async def go():
        batcher = Batcher(max_batch=8, max_wait=0.0, on_batch=lambda n: None, passes=2)
        await batcher.warm(rec)
        await batcher.stop()
    asyncio.run(go())
    assert len(seen) == len(set(seen)) == 2  # one PNG decoded on each of the two threads
    assert sorted(rec.passes) == [1, 1, 2, 2, 4, 4, 8, 8]  # each padded size, on each thread


def test_the_registry_keeps_the_old_model_when_the_new_file_does_not_load(fresh_ckpt, tmp_path):
    live = tmp_path / "m.pth"
    shutil.copy(fresh_ckpt, live)
    reg = Registry({"m": str(live)})
    reg.load_all()
    old = reg.get("m").recognizer
    loads, load = [], reg.load
    reg.load = lambda name: loads.append(name) or load(name)
    assert reg.check() == [] and loads == []  # unchanged: not read again
    replace_atomically(b"garbage", live)
    assert reg.check() == [] and reg.get("m").recognizer is old and "not a readable" in reg.get("m").error
    assert reg.check() == [] and reg.get("m").recognizer is old and loads == ["m"]  # the same broken file: once
    live.unlink()
    assert reg.check() == [] and "is missing" in reg.get("m").error
    replace_atomically(fresh_checkpoint(tmp_path / "b.pth", seed=1), live)
    assert reg.check() == ["m"] and reg.get("m").recognizer is not old and reg.get("m").error is None
    with pytest.raises(Exception, match="unknown model"):
        reg.get("../m.pth")


def test_a_model_that_accepts_nothing_is_served_and_said_so(fresh_ckpt, tmp_path, caplog):
    unsure = tmp_path / "unsure.pth"
    atomic_save(seal({**load_checkpoint(fresh_ckpt), "threshold": ACCEPT_NONE}), unsure)
    reg = Registry({"sure": str(fresh_ckpt), "unsure": str(unsure)})
    with caplog.at_level("WARNING", logger="captcha.serve"):
        reg.load_all()
    said = [r.getMessage() for r in caplog.records if "accepts no reading" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("model unsure ")
    assert not reg.get("unsure").recognizer.accepts(1.0) and reg.get("sure").recognizer.accepts(0.0)


@pytest.mark.slow
def test_the_value_of_each_reading_comes_when_asked_for_in_any_form(server, images):
    blob = images[0].read_bytes()
    plain = httpx.post(f"{server}/v1/recognize", files=[("file", ("a.png", blob))]).json()["results"][0]
    assert "answer" not in plain and "answer_error" not in plain
    asked = [httpx.post(f"{server}/v1/recognize", files=[("file", ("a.png", blob))], data={"answer": "1"}),
             httpx.post(f"{server}/v1/recognize?answer=true", files=[("file", ("a.png", blob))]),
             httpx.post(f"{server}/v1/recognize", json={"image": base64.b64encode(blob).decode(), "answer": True})]
    for r in asked:
        result = r.json()["results"][0]
        assert r.status_code == 200 and result["text"] == plain["text"]
        assert result["answer"] is None and "is not numbers joined by" in result["answer_error"]  # digits: no sum


def test_a_reading_that_is_arithmetic_is_answered_with_its_value():
    from captcha_recognize.serve.app import reading
    assert reading(Prediction("12+3=", 0.9, True), "m", True) == {
        "text": "12+3=", "confidence": 0.9, "accept": True, "model": "m", "answer": 15, "answer_error": None}
    assert reading(Prediction("12+3=", 0.9, True), "m", False) == {
        "text": "12+3=", "confidence": 0.9, "accept": True, "model": "m"}


def stalled_request(url: str) -> socket.socket:
    """A connection that sends a request's head and the start of its body, then nothing more."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/recognize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"image\": \"")
    return s


@pytest.mark.slow
def test_a_body_that_stops_arriving_is_answered_408_and_a_stop_has_a_deadline(fresh_ckpt, tmp_path):
    args = ["--model", f"m={fresh_ckpt}", "--body-timeout", "1", "--shutdown-timeout", "2"]
    with server_process(args, tmp_path / "log") as (url, proc):
        s = stalled_request(url)
        t0 = time.monotonic()
        answer = b""
        while b"stopped arriving" not in answer and (chunk := s.recv(4096)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving for 1 s" in answer
        assert time.monotonic() - t0 < 10
        stalled_request(url)  # another one hangs on while the server is told to stop
        t0 = time.monotonic()
        proc.terminate()
        proc.wait(30)
        assert time.monotonic() - t0 < 15  # the client does not hold the server up


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_workers_stop_when_their_server_process_is_killed(fresh_ckpt, tmp_path):
    args = ["--model", f"m={fresh_ckpt}", "--workers", "2", "--reload-interval", "0.2"]
    with server_process(args, tmp_path / "log") as (url, proc):
        workers = [p for p in children(proc.pid) if Path(f"/proc/{p}/cmdline").read_bytes().count(b"spawn")]
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the server process dies without a word to its workers
        proc.wait(10)
        deadline = time.monotonic() + 30
        while any(running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if running(p)], "a worker still runs"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.slow
def test_a_replaced_onnx_export_is_reloaded_by_every_worker(images, tmp_path):
    from captcha_recognize.reading.export import export_onnx
    a = export_onnx(fresh_checkpoint(tmp_path / "a.pth", seed=0), tmp_path / "a.onnx")
    b = export_onnx(fresh_checkpoint(tmp_path / "b.pth", seed=1), tmp_path / "b.onnx")
    files = images[:8]
    want_a, want_b = [p.text for p in expected(a, files)], [p.text for p in expected(b, files)]
    assert want_a != want_b
    live, log = shutil.copy(a, tmp_path / "live.onnx"), tmp_path / "log"

    def readings() -> list[str]:  # each on a new connection, so both workers take some
        answers = [httpx.post(f"{url}/v1/recognize", files={"file": ("x.png", f.read_bytes())}) for f in files
                   for _ in range(3)]
        return [r.json()["results"][0]["text"] for r in answers]

    def logged(text: str, count: int) -> None:
        deadline = time.monotonic() + 30
        while log.read_text().count(text) < count:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)

    with server_process(["--model", f"live={live}", "--workers", "2", "--reload-interval", "0.2"], log) as (url, _):
        assert readings() == [t for t in want_a for _ in range(3)]
        replace_atomically(b, live)
        logged("reloaded model live", 2)  # once in each worker
        assert readings() == [t for t in want_b for _ in range(3)]
        replace_atomically(b"not an onnx file", live)
        logged("previous version keeps serving", 2)
        assert readings() == [t for t in want_b for _ in range(3)]
