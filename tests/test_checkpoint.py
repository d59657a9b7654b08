"""The checkpoint format: what it holds, the round trip, older checkpoints, refused and broken files."""
from __future__ import annotations

import os

import pytest
import torch

from captcha_recognize.errors import CheckpointError
from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.reading.checkpoint import build_from_checkpoint, checkpoint_dict, load_checkpoint, seal
from conftest import fresh_checkpoint, run_script
from captcha_recognize.data.folders import list_images, load_images
from captcha_recognize.data.arrays import to_arrays
from captcha_recognize.model import CLASSIC_CNN_CHANNELS, CLASSIC_CRNN_CHANNELS, ModelConfig, build_model
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.reading.torch_model import evaluate


@pytest.mark.slow
def test_checkpoint_holds_everything_prediction_needs(cnn_ckpt):
    ckpt = load_checkpoint(cnn_ckpt)
    assert ModelSpec.from_checkpoint(ckpt).to_meta() == {
        "arch": "cnn", "alphabet": "0123456789", "label_length": 4,
        "preprocess": {"width": 50, "height": 22, "channels": 3, "ink": ()}, "case": "keep", "label_map": {},
        "temperature": 1.0, "threshold": None, "fixed_length": False}  # without a validation split: not calibrated
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["optimizer"] is None  # the best checkpoint stays small; *_last.pth holds it
    assert not os.path.exists(str(cnn_ckpt).replace(".pth", "_last.pth"))  # removed after a full run


@pytest.mark.slow
def test_round_trip_gives_the_same_predictions(cnn_ckpt, digits_dir, tmp_path):
    ckpt = load_checkpoint(cnn_ckpt)
    model = build_from_checkpoint(ckpt)
    images, paths = load_images(list_images([digits_dir]))
    spec = ModelSpec.from_checkpoint(ckpt)
    before, conf_before = evaluate(model, spec.converter, to_arrays(images, spec.preprocess))
    torch.save(ckpt, tmp_path / "copy.pth")
    rec = CaptchaRecognizer(tmp_path / "copy.pth")
    after = rec.predict_batch(paths)
    assert [t for t, _ in after] == before
    assert [c for _, c in after] == pytest.approx(conf_before, rel=1e-5)
    one = rec.predict(paths[0])  # a batch of one: another kernel path, the same text, the confidence to float rounding
    assert one[0] == after[0][0] and one[1] == pytest.approx(after[0][1], rel=1e-5)
    # the short training actually learned its images
    labels = [p.name[:4] for p in paths]
    assert sum(p == t for p, t in zip(before, labels)) >= 0.9 * len(labels)


def load_as_saved(ckpt: dict, saved_args: dict, build_args: dict, tmp_path) -> CaptchaRecognizer:
    """Save weights built from ``build_args`` with ``saved_args`` as model_args, as an older version
    would have; load them; check that the weights came back and read as the saved model does."""
    old = build_model(ModelConfig(**build_args)).eval()
    unsaved_then = ("weights_sha256", "sha256", "case", "label_map")
    older = {k: v for k, v in ckpt.items() if k not in unsaved_then}
    torch.save({**older, "model_args": saved_args, "model": old.state_dict()}, tmp_path / "old.pth")
    rec = CaptchaRecognizer(tmp_path / "old.pth")
    loaded = build_from_checkpoint(load_checkpoint(tmp_path / "old.pth")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in old.state_dict().items())
    x = torch.rand(2, build_args["in_channels"], build_args["img_h"], build_args["img_w"]) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(rec.logits(x)), old(x), atol=1e-5)
    return rec


@pytest.mark.parametrize("arch, field, classic", [("cnn", "cnn_channels", CLASSIC_CNN_CHANNELS),
                                                  ("crnn", "crnn_channels", CLASSIC_CRNN_CHANNELS)])
def test_checkpoint_from_before_the_width_fields_loads_the_classic_widths(arch, field, classic, tmp_path):
    ckpt = load_checkpoint(fresh_checkpoint(tmp_path / "new.pth", arch=arch))
    args = {k: v for k, v in ckpt["model_args"].items() if k != field}  # as older versions saved
    rec = load_as_saved(ckpt, args, {**args, field: classic}, tmp_path)
    assert rec.model.net.features[0].out_channels == classic[0] == 32


def test_crnn_checkpoint_keeps_its_own_gru_size(tmp_path):
    ckpt = load_checkpoint(fresh_checkpoint(tmp_path / "new.pth", arch="crnn"))
    assert ckpt["model_args"]["rnn_hidden"] == ModelConfig().rnn_hidden == 96
    args = {**ckpt["model_args"], "rnn_hidden": 128}  # saved when 128 was the default
    rec = load_as_saved(ckpt, args, args, tmp_path)
    assert rec.model.net.rnn.hidden_size == 128


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


@pytest.mark.slow
def test_pickled_code_is_refused_not_run(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"format": "captcha-recognize/1", "model": Exploit()}, bad)
    refusal = "holds pickled objects that a weights-only load does not allow"  # not "refused": tmp_path has it
    with pytest.raises(CheckpointError, match=refusal):
        load_checkpoint(bad)
    r = run_script("torch_model_predict.py", str(tmp_path), "--checkpoint", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and refusal in r.stderr
    assert not (tmp_path / "pwned_marker").exists()


@pytest.mark.slow
def test_missing_foreign_and_corrupt_checkpoints_exit_2(tmp_path, digits_dir):
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 garbage")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for ckpt, msg in [(tmp_path / "none.pth", "no checkpoint"), (foreign, "not a captcha checkpoint"),
                      (corrupt, "not a readable PyTorch checkpoint"), (text, "not a torch.save file")]:
        r = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(ckpt))
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_weights_that_do_not_fit_the_config_are_a_checkpoint_error(fresh_ckpt, tmp_path):
    ckpt = load_checkpoint(fresh_ckpt)
    ckpt["model_args"]["n_positions"] = 5
    torch.save(seal(ckpt), tmp_path / "mismatch.pth")  # sealed as it is: a file this toolkit wrote wrongly
    with pytest.raises(CheckpointError, match="do not fit"):
        CaptchaRecognizer(tmp_path / "mismatch.pth")


def test_incomplete_checkpoint_names_what_is_missing(fresh_ckpt, tmp_path):
    ckpt = load_checkpoint(fresh_ckpt)
    del ckpt["alphabet"], ckpt["preprocess"]
    torch.save(ckpt, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing alphabet, preprocess"):
        load_checkpoint(tmp_path / "partial.pth")


def test_save_is_atomic_and_leaves_no_temporary_file(fresh_ckpt, tmp_path, monkeypatch):
    from captcha_recognize.reading.checkpoint import atomic_save
    target = tmp_path / "m.pth"
    target.write_bytes(fresh_ckpt.read_bytes())
    before = target.read_bytes()

    def broken_save(obj, f):
        open(f, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"x": 1}, target)
    assert target.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


def flip_weight_byte(src, dst, needle: bytes) -> None:
    """Copy ``src`` to ``dst`` with one byte flipped inside the stored weights (after ``needle``)."""
    data = bytearray(src.read_bytes())
    at = data.index(needle) + 200
    data[at] ^= 0xFF
    dst.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_a_one_line_error(fresh_ckpt, tmp_path):
    ckpt = load_checkpoint(fresh_ckpt)
    assert len(ckpt["weights_sha256"]) == len(ckpt["sha256"]) == 64
    bad = tmp_path / "flipped.pth"
    flip_weight_byte(fresh_ckpt, bad, b"data/0")  # torch.save keeps each tensor's bytes in data/N
    with pytest.raises(CheckpointError, match="corrupted: its weights or what reading needs"):
        load_checkpoint(bad)
    older = {k: v for k, v in torch.load(bad, weights_only=True).items() if k != "sha256"}  # before the full seal
    torch.save(older, tmp_path / "older.pth")
    with pytest.raises(CheckpointError, match="corrupted: its weights do not match"):
        load_checkpoint(tmp_path / "older.pth")


@pytest.mark.parametrize("key, value", [("threshold", 0.01), ("alphabet", "0123456798"), ("temperature", 0.5),
                                        ("preprocess", {"width": 50, "height": 22, "channels": 1, "ink": []})])
def test_a_changed_setting_that_reading_depends_on_is_refused(fresh_ckpt, tmp_path, key, value):
    raw = torch.load(fresh_ckpt, weights_only=True)
    torch.save({**raw, key: value}, tmp_path / "changed.pth")  # a flipped bit, or a hand edit
    with pytest.raises(CheckpointError, match="what reading needs"):
        load_checkpoint(tmp_path / "changed.pth")
    torch.save({**raw, "epoch": 99, "config": {"seed": 5}}, tmp_path / "notes.pth")  # what reading ignores
    assert load_checkpoint(tmp_path / "notes.pth")["epoch"] == 99


def test_weights_that_are_not_finite_are_never_saved_nor_loaded(fresh_ckpt, tmp_path):
    from captcha_recognize.reading.spec import ModelSpec
    ckpt = load_checkpoint(fresh_ckpt)
    ckpt["model"]["features.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"not finite \(features.0.weight\).*they were not saved"):
        checkpoint_dict(ckpt["model"], ckpt["model_args"], ModelSpec.from_checkpoint(ckpt))
    torch.save(seal(ckpt), tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"not finite \(features.0.weight\): the training diverged"):
        CaptchaRecognizer(tmp_path / "nan.pth")


def test_a_flipped_byte_in_an_onnx_export_is_refused(fresh_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    from captcha_recognize.reading.export import export_onnx
    out = export_onnx(fresh_ckpt, tmp_path / "m.onnx")
    bad = tmp_path / "flipped.onnx"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the middle of the file is weights
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: its graph or spec does not match the SHA-256"):
        CaptchaRecognizer(bad)
    assert CaptchaRecognizer(out).arch == "cnn"


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    from captcha_recognize.errors import OutputBusy
    from captcha_recognize.files import output_lock
    target = tmp_path / "runs" / "m.pth"
    with output_lock(target):
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}.* is writing .*m.pth"):
            with output_lock(target):
                pass
    with output_lock(target):  # free again once the first run is done
        pass


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    from captcha_recognize.files import remove_stale_temporaries
    for name in (".m.pth.tmp123", ".m.pth.tmp9", ".other.pth.tmp1", "m.pth"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path / "m.pth")
    assert sorted(p.name for p in removed) == [".m.pth.tmp123", ".m.pth.tmp9"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pth.tmp1", "m.pth"]


HUNG_SAVE = """
import sys, time, torch
from captcha_recognize.reading.checkpoint import atomic_save, load_checkpoint
def hung(obj, f, *args, **kwargs):  # half of the file written, then the process is killed
    with open(f, "wb") as fh:
        fh.write(b"PK half a checkpoint")
    print("writing", flush=True)
    time.sleep(120)
torch.save = hung
atomic_save(load_checkpoint(sys.argv[1]), sys.argv[2])
"""


@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_the_old_checkpoint_and_the_next_run_clears_its_temporary(
        fresh_ckpt, digits_dir, tmp_path):
    import shutil
    import subprocess
    import sys
    from captcha_recognize.runtime import child_env
    target = shutil.copy(fresh_ckpt, tmp_path / "m.pth")
    before = target.read_bytes()
    saving = subprocess.Popen([sys.executable, "-c", HUNG_SAVE, str(fresh_checkpoint(tmp_path / "b.pth", seed=1)),
                               str(target)], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert saving.stdout.readline().strip() == "writing"
    finally:
        saving.kill()
        saving.wait(30)
    temps = list(tmp_path.glob(".m.pth.tmp*"))
    assert len(temps) == 1 and target.read_bytes() == before  # the old checkpoint whole, untouched
    assert CaptchaRecognizer(target).arch == "cnn"
    r = run_script("torch_model_train.py", "--data", str(digits_dir), "--out", str(target), "--epochs", "1",
                   "--arch", "cnn", "--plot", "none")
    assert r.returncode == 0, r.stderr
    assert f"removed {temps[0].name}, left by an interrupted save" in r.stdout + r.stderr
    assert not list(tmp_path.glob(".m.pth.tmp*")) and CaptchaRecognizer(target).arch == "cnn"
