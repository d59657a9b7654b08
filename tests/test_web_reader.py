"""The browser reader (web/reader.js on onnxruntime-web) in headless Chromium reads exported models of
both families as Python does: the same texts, the same confidences up to float rounding."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from captcha_recognize import CaptchaRecognizer
from captcha_recognize.bench import static_site
from conftest import NEEDS_CHROMIUM, ROOT

WEB = ROOT / "web"
NEEDS_ORT = pytest.mark.skipif(not (WEB / "node_modules" / "onnxruntime-web").is_dir(),
                               reason="needs onnxruntime-web: cd web && npm ci")
pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM, NEEDS_ORT]


@pytest.fixture
def site(tmp_path):
    """A static server on 127.0.0.1 for ``web/`` and a folder of test files (``/files/``)."""
    files = tmp_path / "files"
    files.mkdir()
    with static_site({"web": WEB, "files": files}) as url:
        yield url, files


READ = """
const [model, urls, done] = arguments;
(async () => {
  const { loadModel } = await import("/web/reader.js");
  const reader = await loadModel(model);
  const out = [];
  for (const url of urls) out.push(await reader.read(url));
  return out;
})().then(done, (e) => done({ error: String(e) }));
"""


def variants(sources: list[Path], folder: Path) -> list[Path]:
    """The captchas in the forms users have: as they are, larger and of odd sizes (so the model's
    input is resized, down and up), with transparency, as a palette, and one animated over two frames."""
    from PIL import Image
    out = []
    for i, f in enumerate(sources):
        im, kind = Image.open(f).convert("RGB"), i % 5
        if kind == 1:
            im = im.resize((im.width * 2 + 3, im.height * 2 + 1), Image.LANCZOS)
        elif kind == 2:
            im = im.resize((im.width * 3 // 4, im.height * 3 // 4 + 1), Image.BICUBIC)
        elif kind == 3:  # the white background transparent
            rgb = np.asarray(im)
            im = Image.fromarray(np.dstack([rgb, np.where(rgb.min(-1) > 230, 0, 255).astype(np.uint8)]), "RGBA")
        elif kind == 4:
            im = im.convert("P", palette=Image.ADAPTIVE, colors=64)
        out.append(folder / f"{i:02d}-{f.name}")
        im.save(out[-1])
    blank = Image.new("RGB", im.size if kind != 1 else (50, 22), "white")
    first = Image.open(sources[0]).convert("RGB")
    first.save(folder / "animated.gif", save_all=True, append_images=[blank.resize(first.size)], duration=200)
    return out + [folder / "animated.gif"]


def browser_readings(browser, url: str, model: str, images: list[str]) -> list[dict]:
    browser.set_script_timeout(240)
    browser.get(f"{url}/web/index.html")
    out = browser.execute_async_script(READ, f"{url}/files/{model}", [f"{url}/files/{name}" for name in images])
    assert "error" not in out, out
    return out


@pytest.mark.parametrize("family", ["cnn", "crnn"])
def test_the_browser_reads_as_python(family, browser, site, cnn_ckpt, tmp_path):
    pytest.importorskip("onnx")
    from captcha_recognize.reading.export import export_onnx
    url, files = site
    ckpt = cnn_ckpt if family == "cnn" else ROOT / "captcha_recognize.pth"  # the shipped model is a CRNN
    model = export_onnx(ckpt, files / "m.onnx")
    images = variants(sorted((ROOT / "new_images").iterdir())[:24], files)
    rec = CaptchaRecognizer(model)
    assert rec.arch == family
    python = [rec.predict_details(f) for f in images]
    js = browser_readings(browser, url, "m.onnx", [f.name for f in images])
    assert [r["text"] for r in js] == [p.text for p in python]
    assert [r["confidence"] for r in js] == pytest.approx([p.confidence for p in python], abs=2e-4)
    assert [r["accept"] for r in js] == [p.accept for p in python]


DESCRIBE = """
const [model, url, done] = arguments;
(async () => {
  const { loadModel } = await import("/web/reader.js");
  const reader = await loadModel(model);
  return { line: reader.describe(), reading: await reader.read(url) };
})().then(done, (e) => done({ error: String(e) }));
"""


def test_the_browser_says_what_a_model_accepts_and_accepts_nothing_when_told(browser, site, cnn_ckpt):
    pytest.importorskip("onnx")
    from captcha_recognize.reading.calibration import ACCEPT_NONE
    from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint, seal
    from captcha_recognize.reading.export import export_onnx
    url, files = site
    shutil.copy(ROOT / "new_images" / "0059.png", files / "0059.png")
    browser.set_script_timeout(120)
    browser.get(f"{url}/web/index.html")
    lines = {}
    for name, threshold in (("any", None), ("some", 0.5), ("none", ACCEPT_NONE)):
        atomic_save(seal({**load_checkpoint(cnn_ckpt), "threshold": threshold}), files / f"{name}.pth")
        export_onnx(files / f"{name}.pth", files / f"{name}.onnx")
        out = browser.execute_async_script(DESCRIBE, f"{url}/files/{name}.onnx", f"{url}/files/0059.png")
        assert "error" not in out, out
        lines[name] = out
    assert lines["any"]["line"].endswith("accepts every reading") and lines["any"]["reading"]["accept"]
    assert lines["some"]["line"].endswith("accepts readings of confidence >= 0.5000")
    assert "accepts nothing" in lines["none"]["line"] and not lines["none"]["reading"]["accept"]
    assert lines["none"]["line"].startswith("cnn, alphabet 0123456789, input 50x22")


def test_the_browser_refuses_a_model_whose_spec_was_changed(browser, site, cnn_ckpt):
    pytest.importorskip("onnx")
    from captcha_recognize.reading.export import export_onnx
    url, files = site
    data = bytearray(export_onnx(cnn_ckpt, files / "m.onnx").read_bytes())
    at = data.find(b'"alphabet": "0123456789"')
    data[at:at + 24] = b'"alphabet": "0123456798"'  # 8 and 9 swapped: it would read silently wrong
    (files / "bad.onnx").write_bytes(bytes(data))
    shutil.copy(ROOT / "new_images" / "0059.png", files / "0059.png")
    browser.set_script_timeout(120)
    browser.get(f"{url}/web/index.html")
    out = browser.execute_async_script(READ, f"{url}/files/bad.onnx", [f"{url}/files/0059.png"])
    assert "corrupted" in out["error"]
    assert Path(files / "bad.onnx").stat().st_size == len(data)
