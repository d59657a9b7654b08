"""The Python API: every input form reads the same, and the parallel folder pipeline reads like one worker."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.reading.checkpoint import atomic_save, checkpoint_dict
from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.preprocess import Preprocess
from captcha_recognize.model import ModelConfig, build_model
from captcha_recognize.reading.inference import infer
from captcha_recognize.reading.recognizer import CPU_CHUNK, CaptchaRecognizer, predict_files


def test_recognizer_accepts_path_bytes_pil_and_array(fresh_ckpt, digits_dir):
    rec = CaptchaRecognizer(fresh_ckpt)
    files = sorted(digits_dir.iterdir())
    readings = rec.predict_batch(files[:8])
    assert len(set(readings)) > 1  # the test images read differently, so a mix-up would show
    f = files[0]
    img = Image.open(f)
    img.load()
    by_path = rec.predict(f)
    assert by_path == readings[0]
    assert rec.predict(str(f)) == by_path
    assert rec.predict(f.read_bytes()) == by_path
    assert rec.predict(img) == by_path
    assert rec.predict(np.asarray(img)) == by_path
    buf = io.BytesIO()
    img.convert("RGBA").save(buf, "PNG")  # a different mode of the same pixels reads the same
    assert rec.predict(buf.getvalue())[0] == by_path[0]
    assert rec.predict_batch([]) == []


def test_confidence_is_the_product_of_the_chosen_probabilities(fresh_ckpt, digits_dir):
    rec = CaptchaRecognizer(fresh_ckpt)
    f = sorted(digits_dir.iterdir())[0]
    from captcha_recognize.data.arrays import preprocess
    logits = torch.from_numpy(rec.logits(preprocess([f], rec.preprocess)))  # (1, P, K)
    probs = logits.softmax(-1)[0]
    text, conf = rec.predict(f)
    assert text == "".join(rec.converter.alphabet[k] for k in probs.argmax(-1).tolist())
    assert conf == pytest.approx(probs.max(-1).values.prod().item(), rel=1e-5)


@pytest.mark.parametrize("arch", ["cnn", "crnn"])
def test_batch_norm_is_folded_into_the_convs_and_reads_as_before(arch, tmp_path):
    cfg = ModelConfig(arch=arch, n_classes=10, n_positions=4, in_channels=3, img_h=22, img_w=50)
    model = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():  # statistics far from the identity, as training leaves them
        for bn in norms:
            bn.running_mean.normal_(0, 1, generator=gen)
            bn.running_var.uniform_(0.2, 3.0, generator=gen)
            bn.weight.normal_(1, 0.5, generator=gen)
            bn.bias.normal_(0, 1, generator=gen)
    atomic_save(checkpoint_dict(model.state_dict(), vars(cfg), ModelSpec(arch, "0123456789", 4, Preprocess(50, 22, 3))),
                tmp_path / "m.pth")
    rec = CaptchaRecognizer(tmp_path / "m.pth")
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in rec.model.net.modules())
    x = torch.rand(5, 3, 22, 50, generator=gen) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(rec.logits(x)), model(x), atol=1e-4)


def test_infer_batches_in_order():
    conv = LabelConverter("ab", 1)
    arrays = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1) * 60  # image i is the grey value 60 * i
    seen = []

    def logits(x):  # "a" for dark images, "b" for light ones
        seen.append(len(x))
        light = (x.reshape(len(x), -1)[:, 0] > 0).astype(np.float32)
        return np.stack([1 - light, light], 1)[:, None] * 10  # (B, 1, 2)
    texts, _ = infer(logits, conv, arrays, batch_size=2)
    assert texts == ["a", "a", "a", "b", "b"] and seen == [2, 2, 1]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cnn_ckpt", "crnn_ckpt"])
def test_parallel_chunks_read_like_one_worker_in_order(which, request, digits_dir, tmp_path, capsys):
    ckpt = request.getfixturevalue(which)
    files = sorted(digits_dir.iterdir()) * 3  # several chunks
    assert len(files) > 2 * CPU_CHUNK
    bad = [tmp_path / "0000.png", tmp_path / "1111.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(b"\x89PNG broken")
    files = bad[:1] + files + bad[1:]  # one bad file in the first chunk, one in the last
    one = predict_files(CaptchaRecognizer(ckpt, workers=1), files)
    capsys.readouterr()
    rec = CaptchaRecognizer(ckpt, workers=2)
    threads = torch.get_num_threads()
    many = predict_files(rec, files)
    assert torch.get_num_threads() == threads  # restored after the workers
    assert [r["path"] for r in many] == [str(f) for f in files[1:-1]]
    assert [r["prediction"] for r in many] == [r["prediction"] for r in one]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2 unreadable images" in err[0]
    assert rec.predict_batch(files[1:-1]) == [(r["prediction"], pytest.approx(r["confidence"], abs=1e-5))
                                              for r in one]




def test_the_shipped_checkpoint_reads_the_shipped_new_images():
    """``captcha_recognize.pth`` is what the quick start and several tests rely on: it must be a
    finished, good model, never an interrupted run's file."""
    from conftest import ROOT
    from captcha_recognize.data.folders import list_images
    from captcha_recognize.data.labels import name_text
    files = list_images([ROOT / "new_images"])
    readings = CaptchaRecognizer(ROOT / "captcha_recognize.pth").predict_batch(files)
    right = sum(text == name_text(f) for (text, _), f in zip(readings, files))
    assert len(files) == 100 and right >= 85  # an unfinished run reads next to none
