"""Training pieces: the default number of epochs, the best-epoch rule, the weight average (EMA) that
--ema validates and saves, and train() called from Python."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from captcha_recognize.reading.checkpoint import load_checkpoint
from conftest import run_script
from captcha_recognize.training.recipe import DEFAULT_LR, EMA_DECAY, default_epochs
from captcha_recognize.training.state import EMA
from captcha_recognize.errors import DataError
from captcha_recognize.training import TrainConfig, train
from captcha_recognize.training.saver import is_best


def test_the_second_half_of_the_schedule_picks_its_own_best_epoch():
    def scores(seq: float, char: float) -> dict[str, float]:
        return {"sequence_accuracy": seq, "character_accuracy": char}
    early = scores(1.0, 1.0)  # a lucky early epoch: every validation image right
    assert not is_best(scores(0.98, 0.99), early, 40, 95)  # still the first half
    assert is_best(scores(0.98, 0.99), early, 48, 95)  # the second half starts afresh
    second = scores(0.98, 0.99)
    assert not is_best(scores(0.97, 1.0), second, 60, 95)
    assert is_best(scores(0.98, 0.99), second, 60, 95)  # ties go to the later epoch
    assert is_best(scores(0.5, 0.8), {"sequence_accuracy": -1.0}, 1, 1)  # a one-epoch run keeps it


def test_default_epochs_give_small_sets_the_full_step_count():
    # 90 images at batch 32: 3 steps per epoch, so 1600 steps need 534 epochs (no cap)
    assert default_epochs(90, 32, 1, 1600) == 534
    assert default_epochs(10, 32, 1, 1600) == 1600  # one step per epoch
    assert default_epochs(3600, 32, 1, 800) == 32  # large sets: at least 32 passes
    assert default_epochs(674, 32, 2, 1600) == 146  # per-process batches under DDP: 11 steps


def test_default_epochs_give_the_smallest_sets_more_steps():
    assert default_epochs(90, 32, 1) == 800  # 100 labelled images: 2400 steps
    assert default_epochs(180, 32, 1) == 267  # 200 labelled images: 1600 steps
    assert default_epochs(3600, 32, 1) == 32  # 113 steps per epoch: MIN_EPOCHS rules


def test_ema_averages_weights_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # step 1: decay warms up to min(0.9, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.model[0].weight, d * start + (1 - d) * (start + 1))
    assert ema.model[1].num_batches_tracked.item() == 7  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.model.parameters())
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.model[0].weight, start + 1, atol=1e-6)  # converges to the live weights


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cnn", "crnn"])
def test_the_crnn_averages_its_weights_by_default_and_the_cnn_does_not(arch, digits_dir, tmp_path, monkeypatch):
    decays, update = [], EMA.update
    monkeypatch.setattr(EMA, "update", lambda self, model: decays.append(self.decay) or update(self, model))
    out = tmp_path / "m.pth"
    train(TrainConfig(data=[str(digits_dir)], arch=arch, epochs=1, batch_size=16, plot="none", out=str(out),
                      show_errors=0, quiet=True))
    assert load_checkpoint(out)["config"]["ema"] == EMA_DECAY[arch]
    assert set(decays) == ({0.999} if arch == "crnn" else set())


@pytest.mark.slow
def test_train_with_ema_saves_the_averaged_weights(digits_dir, tmp_path):
    common = ["torch_model_train.py", "--data", str(digits_dir), "--epochs", "2", "--batch-size", "16",
              "--val-split", "0", "--plot", "none"]
    raw, avg = tmp_path / "raw.pth", tmp_path / "ema.pth"
    r = run_script(*common, "--ema", "0", "--out", str(raw))
    assert r.returncode == 0 and "no validation images, saved the last epoch" in r.stdout  # not "0.00%"
    assert "warning: only 64 training images" in r.stdout  # far too few for real captchas
    r = run_script(*common, "--ema", "0.9", "--out", str(avg))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_checkpoint(raw), load_checkpoint(avg)
    assert b["config"]["ema"] == 0.9 and b["ema"] is None  # the averaged weights are "model" itself
    w = "features.0.weight"
    assert not torch.equal(a["model"][w], b["model"][w])  # same seed: only the averaging differs


@pytest.mark.slow
def test_train_from_python_resolves_defaults_without_changing_the_config(digits_dir, tmp_path):
    cfg = TrainConfig(data=[str(digits_dir)], arch="crnn", epochs=2, batch_size=16, plot="none",
                      out=str(tmp_path / "m.pth"), quiet=True)
    before = copy.deepcopy(cfg)
    result = train(cfg)
    assert cfg == before  # nothing written back into the caller's config, nor into its lists
    assert result.out == tmp_path / "m.pth" and result.out.is_file()
    assert result.config.epochs == 2 and result.config.splice is not None  # resolved: 0.5 or 0.0
    assert result.config.arch == "crnn" and result.config.lr == DEFAULT_LR["crnn"] and result.config.warp == 0.05
    # of 2 epochs the second starts the schedule's second half, whose best is picked afresh: epoch 2
    assert len(result.history) == 2 and result.best["epoch"] == 2
    saved = load_checkpoint(result.out)["config"]
    assert saved["arch"] == "crnn" and saved["epochs"] == 2 and saved["splice"] == result.config.splice
    assert cfg.lr is None and saved["lr"] == result.config.lr == DEFAULT_LR["crnn"] != DEFAULT_LR["cnn"]


# ----------------------------------------------------------------- outputs, resume, mistakes

def test_default_output_keeps_the_shipped_model_for_train_images_only(tmp_path):
    from captcha_recognize.training.config import default_out
    assert default_out(["train_images"]) == "captcha_recognize.pth" == default_out([])
    assert default_out([str(tmp_path / "shop")]) == "runs/shop/model.pth"
    assert default_out([str(tmp_path / "shop"), "x"]) == "runs/shop-and-more/model.pth"


@pytest.mark.parametrize("change, message", [
    ({"img_size": (8, 8), "arch": "cnn"}, "--img-size: must be at least 16x16 for the cnn, got 8x8"),
    ({"img_size": (64, 8), "arch": "crnn"}, "--img-size: must be at least 8x16 for the crnn"),
    ({"device": "cuda"}, "--device: cuda was asked for"),
    ({"case": "title"}, "--case: must be one of keep, lower, upper, got 'title'"),
    ({"warp": 0.8}, "--warp: must be a number in [0, 0.5], got 0.8"),
    ({"out": "/proc/nowhere/m.pth"}, "--out: cannot create the folder"),
])
def test_settings_that_cannot_work_fail_before_any_data_is_read(change, message, tmp_path):
    if change.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from captcha_recognize.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        train(TrainConfig(data=[str(tmp_path / "not-there")], **{"out": str(tmp_path / "m.pth"), **change}))
    assert str(e.value).startswith(message)


def interrupt_at(monkeypatch, epoch: int) -> None:
    """Make training stop with Ctrl-C when ``epoch`` starts."""
    from captcha_recognize.training import supervised
    real = supervised.run_epoch

    def run_epoch(attempt, e):
        if e == epoch:
            raise KeyboardInterrupt
        real(attempt, e)
    monkeypatch.setattr(supervised, "run_epoch", run_epoch)


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(digits_dir, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=[str(digits_dir)], epochs=3, out=str(tmp_path / "m.pth"), plot="none"))
    assert "no epoch had finished, nothing was saved" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.pth"))


@pytest.fixture
def interrupted(digits_dir, tmp_path, monkeypatch):
    """A CNN run of 3 epochs stopped by Ctrl-C after its second epoch, a save point after each epoch:
    (best, last) checkpoints."""
    from captcha_recognize.training import saver
    out = tmp_path / "run" / "m.pth"
    monkeypatch.setattr(saver, "SAVE_EVERY", 0.0)
    interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=[str(digits_dir)], arch="cnn", epochs=3, batch_size=16, seed=4, out=str(out),
                          plot="none", augment=False, quiet=True))
    monkeypatch.undo()
    return out, out.with_name("m_last.pth")


@pytest.mark.slow
def test_save_points_come_after_the_first_epoch_then_at_most_every_save_every_seconds_and_at_the_end(
        digits_dir, tmp_path, monkeypatch, capsys):
    from captcha_recognize.training import saver
    monkeypatch.setattr(saver, "SAVE_EVERY", 3600.0)
    written = []
    real = saver.atomic_save
    monkeypatch.setattr(saver, "atomic_save", lambda obj, path: (written.append((Path(path).name, obj["epoch"])),
                                                                     real(obj, path)))
    out = tmp_path / "m.pth"
    cfg = dict(data=[str(digits_dir)], arch="cnn", batch_size=16, seed=4, augment=False, quiet=True, plot="none")
    interrupt_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**cfg, "quiet": False}, epochs=6, out=str(out)))
    assert written == [("m.pth", 1), ("m_last.pth", 1)]  # epochs 2 and 3 came within the hour
    assert f"interrupted: saved up to epoch 1, the best of them in {out}" in capsys.readouterr().out
    assert load_checkpoint(out)["epoch"] == 1 and torch.load(tmp_path / "m_last.pth", weights_only=True)["epoch"] == 1

    monkeypatch.undo()
    monkeypatch.setattr(saver, "SAVE_EVERY", 3600.0)
    monkeypatch.setattr(saver, "atomic_save", lambda obj, path: (written.append((Path(path).name, obj["epoch"])),
                                                                     real(obj, path)))
    written.clear()
    result = train(TrainConfig(**cfg, epochs=4, out=str(tmp_path / "full.pth")))
    best = result.best["epoch"]
    assert best >= 3  # the schedule's second half starts afresh at epoch 3
    last = result.history[-1]["epoch"]  # 4, or more if the schedule was extended
    assert written == [("full.pth", 1), ("full_last.pth", 1), ("full.pth", best), ("full_last.pth", last)]
    ckpt = load_checkpoint(tmp_path / "full.pth")  # the best epoch's file, as if written when that epoch ended
    assert ckpt["epoch"] == best and [h["epoch"] for h in ckpt["history"]] == list(range(1, best + 1))


@pytest.mark.slow
def test_resume_takes_the_run_from_its_checkpoint_and_extends_it(interrupted, capsys, tmp_path):
    out, last = interrupted
    result = train(TrainConfig(resume=str(last), epochs=5, show_errors=0))
    stdout = capsys.readouterr().out
    assert result.out == out and result.config.data == load_checkpoint(out)["config"]["data"]
    assert result.config.seed == 4 and result.config.batch_size == 16 and not result.config.augment
    assert "extending the schedule from 3 to 5 epochs" in stdout and "resuming at epoch 3 of 5" in stdout
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5] and not last.exists()


@pytest.mark.slow
def test_resume_refuses_conflicts_a_best_checkpoint_and_fewer_epochs(interrupted, tmp_path):
    from captcha_recognize.errors import CheckpointError
    from captcha_recognize.errors import ConfigError
    out, last = interrupted
    with pytest.raises(ConfigError, match="--arch: crnn differs from the resumed run's cnn"):
        train(TrainConfig(resume=str(last), arch="crnn"))
    with pytest.raises(ConfigError, match="--data: .* differs from the resumed run's"):
        train(TrainConfig(resume=str(last), data=[str(tmp_path)]))
    with pytest.raises(ConfigError, match="--epochs: the resumed run has already trained 2 epochs: give at least 2"):
        train(TrainConfig(resume=str(last), epochs=1))
    with pytest.raises(CheckpointError, match=f"best checkpoint without optimizer state.*resume from {last}"):
        train(TrainConfig(resume=str(out)))


def test_no_generated_captchas_is_one_setting_whether_left_to_the_default_or_given_as_0():
    from captcha_recognize.training.resume import same_setting
    assert same_setting("synthetic", None, 0) and same_setting("synthetic", 0, None)  # resuming with --synthetic 0
    assert not same_setting("synthetic", None, 200) and same_setting("synthetic", 200, 200)


def test_a_run_refuses_an_output_another_run_is_writing(tmp_path):
    from captcha_recognize.errors import OutputBusy
    from captcha_recognize.files import output_lock
    with output_lock(tmp_path / "m.pth"):
        with pytest.raises(OutputBusy, match="is writing"):
            train(TrainConfig(data=["nothing-read-yet"], out=str(tmp_path / "m.pth")))


@pytest.mark.slow
def test_stale_temporaries_go_and_mistakes_name_their_files(digits_dir, tmp_path, capsys):
    (tmp_path / ".m.pth.tmp4242").write_bytes(b"half a checkpoint")
    train(TrainConfig(data=[str(digits_dir)], epochs=1, val_split=0.25, out=str(tmp_path / "m.pth"), plot="none",
                      show_errors=3))
    stdout = capsys.readouterr().out
    assert "removed .m.pth.tmp4242" in stdout and not (tmp_path / ".m.pth.tmp4242").exists()
    assert "1 epoch," in stdout and "1 epochs" not in stdout
    rows = [ln for ln in stdout.splitlines() if ln.endswith(".png")]
    assert len(rows) == 3 and all((digits_dir / ln.split("|")[-1].strip()).is_file() for ln in rows)
    assert "validation mistakes of the best model: " in stdout and ", the first 3:" in stdout


@pytest.mark.slow
def test_show_errors_0_counts_the_mistakes_without_listing_them(digits_dir, tmp_path, capsys):
    train(TrainConfig(data=[str(digits_dir)], epochs=1, val_split=0.25, out=str(tmp_path / "m.pth"), plot="none",
                      show_errors=0))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("validation mistakes"))
    assert line.endswith("(--show-errors N lists them)") and int(line.split(": ")[1].split()[0]) > 0


@pytest.mark.slow
def test_mixed_case_labels_warn_once_and_case_is_kept_in_the_checkpoint(tmp_path, capsys):
    from captcha_recognize.reading.recognizer import CaptchaRecognizer
    from captcha_recognize.data.synthetic import generate
    generate(tmp_path / "data", 24, seed=1, alphabet="abAB12", length=4, show=False)
    train(TrainConfig(data=[str(tmp_path / "data")], epochs=1, out=str(tmp_path / "keep.pth"), plot="none"))
    assert capsys.readouterr().out.count("labels hold both cases of a, b") == 1
    train(TrainConfig(data=[str(tmp_path / "data")], epochs=1, case="lower", out=str(tmp_path / "low.pth"),
                      plot="none"))
    assert "both cases" not in capsys.readouterr().out
    rec = CaptchaRecognizer(tmp_path / "low.pth")
    assert rec.converter.alphabet == "12ab" and rec.spec.rules.case == "lower"
    assert rec.label_of("AB12.png") == "ab12"  # prediction scores names the way training read them


def test_column_spread_of_one_image_has_no_warning():
    import warnings
    from captcha_recognize.data.augment import column_spread
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert column_spread(torch.zeros(1, 1, 4, 6, dtype=torch.uint8)).tolist() == [0.0] * 6


def test_arch_auto_picks_the_cnn_for_fixed_pitch_text_with_enough_labels():
    from PIL import Image
    from captcha_recognize.data.folders import LabelledImages
    from test_augment import fixed_and_moving
    from captcha_recognize.training.task import choose_arch
    fixed, moving = fixed_and_moving()  # (90, 1, 8, 60) glyph rows

    def pick(arrays, labels, pseudo=0, **cfg):
        images = [Image.fromarray(a[0].numpy()) for a in arrays]
        return choose_arch(LabelledImages(images, labels, []), TrainConfig(**cfg), pseudo)[0]
    assert pick(fixed, ["1234"] * 90) == "cnn"
    assert pick(moving, ["1234"] * 90) == "crnn"
    assert pick(fixed, ["1234"] * 89 + ["123"]) == "crnn"  # two lengths: only the crnn reads both
    assert pick(moving, ["1234"] * 90, length=4) == "cnn"  # --length asks for the cnn
    ten = [f"{i % 10}{(i + 3) % 10}{(i + 5) % 10}{(i + 7) % 10}" for i in range(90)]  # 10 characters
    assert pick(fixed, ten) == "crnn"  # 90 labels, under 12 per character: the base CRNN
    assert pick(fixed, ten, from_scratch=True) == "cnn"  # no base model to start from
    assert pick(fixed[:40], ["1234"] * 40) == "crnn"  # 4 characters: 48 labels needed
    assert pick(fixed[:40], ["1234"] * 40, pseudo=8) == "cnn"  # pseudo-labelled images count


def test_a_missing_checkpoint_or_resume_file_says_what_to_run(fresh_ckpt, digits_dir, tmp_path):
    from captcha_recognize.errors import CheckpointError
    with pytest.raises(CheckpointError, match=r"train one with: python torch_model_train.py --out .*gone\.pth\)"):
        load_checkpoint(tmp_path / "gone.pth")
    finished = tmp_path / "m.pth"  # a run that finished: its best checkpoint, no resume file
    finished.write_bytes(fresh_ckpt.read_bytes())
    with pytest.raises(CheckpointError, match=f"a run that finished leaves none; .* --init-from {finished}$"):
        train(TrainConfig(data=[str(digits_dir)], out=str(finished), resume="", quiet=True))


def test_split_seed_keeps_the_validation_split_while_the_seed_changes(digits_dir):
    from captcha_recognize.data.codec import LabelConverter
    from captcha_recognize.data.preprocess import Preprocess
    from captcha_recognize.data.folders import read_labelled
    from captcha_recognize.training.events import Events
    from captcha_recognize.training.task import build_datasets
    data = read_labelled([str(digits_dir)])
    conv, spec = LabelConverter("0123456789", 4), Preprocess()
    names = lambda **kw: build_datasets(TrainConfig(val_split=0.25, **kw), data, conv, spec, Events())[1].names  # noqa: E731
    assert names(seed=1, split_seed=0) == names(seed=0) != names(seed=1)


@pytest.mark.slow
def test_a_crnn_on_flat_colour_captchas_reads_ink_masks_and_says_so(tmp_path, capsys):
    from captcha_recognize.reading.recognizer import CaptchaRecognizer
    from test_dataset import LINES, TEXT, flat_captcha
    for s in range(16):
        flat_captcha(s).save(tmp_path / f"{1000 + s}.png")
    train(TrainConfig(data=[str(tmp_path)], arch="crnn", epochs=1, out=str(tmp_path / "m.pth"), plot="none"))
    assert "input 80x32x1 + 2 ink masks (140,140,140 112,112,112)" in capsys.readouterr().out
    rec = CaptchaRecognizer(tmp_path / "m.pth")
    assert rec.spec.preprocess.ink == (TEXT, LINES)
    assert rec.model.net.features[0].in_channels == 3  # the image and its two masks
    text, _ = rec.predict(tmp_path / "1000.png")
    assert len(text) == 4


def test_a_run_from_a_checkpoint_names_each_given_setting_its_weights_keep_their_own(tmp_path):
    from captcha_recognize.reading.spec import ModelSpec
    from conftest import fresh_checkpoint
    from captcha_recognize.data.preprocess import Preprocess
    from captcha_recognize.training.task import kept_from_checkpoint
    pre = Preprocess(100, 32, 1, ((140, 140, 140),))
    ckpt = fresh_checkpoint(tmp_path / "c.pth", "crnn", "0123456789", 4, pre)
    spec = ModelSpec.from_checkpoint(load_checkpoint(ckpt))
    (tmp_path / "map.txt").write_text("x *\n")
    notes = kept_from_checkpoint(TrainConfig(arch="cnn", alphabet="0123", length=5, img_size=(50, 22), channels=3,
                                             ink="off", case="lower", label_map=str(tmp_path / "map.txt")), spec)
    note = "note: using the checkpoint's {}, not {}: its weights were made for it"
    assert notes == [note.format(theirs, flag) for theirs, flag in [
        ("architecture 'crnn'", "--arch cnn"),
        ("alphabet '0123456789'", "--alphabet 0123"), ("label length 4", "--length 5"),
        ("input size 100x32", "--img-size 50x22"), ("grey input", "--channels 3"),
        ("1 ink mask (140,140,140)", "--ink off"), ("case rule 'keep'", "--case lower"),
        ("label map (none)", f"--label-map {tmp_path / 'map.txt'}")]]
    same = TrainConfig(arch="crnn", alphabet="0123456789", length=4, img_size=(100, 32), channels=1, case="keep")
    assert kept_from_checkpoint(same, spec) == [] == kept_from_checkpoint(TrainConfig(), spec)
    any_length = ModelSpec("crnn", "0123456789", None, pre)
    assert kept_from_checkpoint(TrainConfig(length=5), any_length) == [
        "note: using the checkpoint's labels of any length, not --length 5: its weights were made for it"]


@pytest.mark.slow
def test_fine_tuning_with_another_input_size_says_it_keeps_the_checkpoints(fresh_ckpt, digits_dir, tmp_path, capsys):
    out = tmp_path / "m.pth"
    train(TrainConfig(data=[str(digits_dir)], init_from=str(fresh_ckpt), img_size=(60, 24), epochs=1, plot="none",
                      out=str(out)))
    said = capsys.readouterr().out
    assert "note: using the checkpoint's input size 50x22, not --img-size 60x24" in said
    assert "arch auto: cnn, as the --init-from checkpoint is one" in said and "architecture" not in said
    assert load_checkpoint(out)["preprocess"]["width"] == 50


@pytest.mark.slow
def test_a_flag_given_on_resume_is_checked_even_when_it_equals_its_default(interrupted):
    from captcha_recognize.cli.train import train_config
    from captcha_recognize.errors import ConfigError
    out, last = interrupted  # trained with --seed 4 and --batch-size 16
    with pytest.raises(ConfigError, match="--seed: 0 differs from the resumed run's 4"):
        train(train_config(["--resume", str(last), "--seed", "0"]))
    with pytest.raises(ConfigError, match="--batch-size: 32 differs from the resumed run's 16"):
        train(train_config(["--resume", str(last), "--batch-size", "32"]))
    assert train_config(["--resume", str(last), "--seed", "0"]).given == ("resume", "seed")


@pytest.mark.slow
def test_resume_with_arch_auto_continues_the_runs_own_architecture(interrupted, capsys):
    from captcha_recognize.cli.train import train_config
    out, last = interrupted
    result = train(train_config(["--resume", str(last), "--arch", "auto", "--show-errors", "0"]))
    said = capsys.readouterr().out
    assert result.config.arch == "cnn" and "resuming at epoch 3 of 3" in said
    assert "--init-from" not in said and "arch auto" not in said


@pytest.mark.slow
def test_events_go_to_a_file_and_to_a_callback_and_an_error_is_one(digits_dir, tmp_path):
    seen = []
    cfg = TrainConfig(data=[str(digits_dir)], arch="cnn", epochs=2, out=str(tmp_path / "m.pth"), plot="none",
                      events=str(tmp_path / "events.jsonl"), quiet=True)
    train(cfg, on_event=seen.append)
    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(seen))  # the same events, as JSON
    kinds = [e["event"] for e in written]
    assert kinds.index("start") < kinds.index("epoch") and kinds.count("epoch") == 2 and kinds[-1] == "done"
    assert [e["epoch"] for e in written if e["event"] == "epoch"] == [1, 2]
    assert written[-1]["epochs_trained"] == 2 and written[-1]["out"] == str(tmp_path / "m.pth")
    errors = []
    with pytest.raises(DataError):
        train(replace(cfg, data=[str(tmp_path / "none")], events=None), on_event=errors.append)
    assert [e["event"] for e in errors] == ["error"] and errors[0]["text"].startswith("error: no such file")
