"""Self-training on unlabelled captchas: stable readings become pseudo-labels only when they can be trusted."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from captcha_recognize.reading.checkpoint import load_checkpoint
from conftest import ROOT
from captcha_recognize.data.folders import load_images
from captcha_recognize.data.arrays import to_arrays
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.errors import ConfigError
from captcha_recognize.training import selftrain
from captcha_recognize.training.supervised import train_supervised
from captcha_recognize.training.selftrain import (AGAIN_SEED, FIRST_LR, FIRST_SHARE, SMALL_SET, SYNTHETIC_MIX,
                                                  first_round, stable_readings)
from captcha_recognize.data.synthetic import generate
from captcha_recognize.training import TrainConfig, train


def unlabelled_copy(src, dst, n: int):
    """The first ``n`` images of ``src`` under names that are no labels; returns their true labels."""
    dst.mkdir()
    truth = {}
    for i, f in enumerate(sorted(src.iterdir())[:n]):
        (dst / f"img{i:03d}.png").write_bytes(f.read_bytes())
        truth[f"img{i:03d}.png"] = f.name[:4]
    return truth


def labelled_and_pool(tmp_path):
    """40 labelled captchas in ``lab`` and 60 others under unlabelled names in ``unl``; returns
    the labelled folder and the true labels of the unlabelled images."""
    generate(tmp_path / "lab", 40, seed=21, show=False)
    generate(tmp_path / "pool", 60, seed=22, show=False)
    return tmp_path / "lab", unlabelled_copy(tmp_path / "pool", tmp_path / "unl", 60)


def test_stable_readings_need_every_perturbed_copy_to_agree(digits_dir):
    rec = CaptchaRecognizer(ROOT / "captcha_recognize.pth")  # a trained reader: some images are borderline
    images, _ = load_images(sorted(digits_dir.iterdir()))
    arrays = to_arrays(images, rec.preprocess)  # (64, C, H, W) uint8
    clean = [t for t, _ in rec.predict_arrays(arrays)]
    readings = stable_readings(rec, arrays, seed=0, lengths={4})
    assert all(r is None or r[0] == c for r, c in zip(readings, clean))  # a pseudo-label is the clean reading
    assert 0 < sum(r is None for r in readings) < len(images) // 2  # some read unstably, most do not
    assert stable_readings(rec, arrays, seed=0, lengths={5}) == [None] * len(images)  # never of a length not labelled


def test_stable_readings_are_refused_on_evidence_not_on_one_misread_of_a_small_split():
    # 50 labels leave 5 validation images: one misread of the 4 that read stably says little
    assert selftrain.trusted(3, 4) and selftrain.trusted(34, 40)  # 75% and 85%, too few to show under 90%
    assert selftrain.trusted(4, 5) and not selftrain.trusted(3, 5)  # the bar at both sides
    assert selftrain.trusted(8, 10) and not selftrain.trusted(7, 10)
    assert not selftrain.trusted(2, 4) and not selftrain.trusted(30, 40)
    assert not selftrain.trusted(0, 6)  # an untrained model reads stably and wrongly
    assert selftrain.trusted(1900, 2000) and not selftrain.trusted(1700, 2000)  # large splits too
    assert not selftrain.trusted(0, 0)  # nothing read stably: nothing to trust them on


def test_self_training_needs_a_validation_split_and_no_resume(tmp_path):
    with pytest.raises(ConfigError, match="--unlabelled: needs a validation split"):
        train(TrainConfig(data=["x"], unlabelled="y", val_split=0))
    with pytest.raises(ConfigError, match="--unlabelled: cannot be combined with --resume"):
        train(TrainConfig(data=["x"], unlabelled="y", resume="z"))


def test_the_labelled_only_round_is_a_crnn_only_when_auto_would_see_few_labels(tmp_path):
    deadline = time.time() + 600
    few, _ = first_round(TrainConfig(), ["1234"] * (SMALL_SET - 1), tmp_path, deadline)
    assert few.arch == "crnn" and 0.9 * FIRST_SHARE * 10 < few.time_budget <= FIRST_SHARE * 10
    assert few.stretch  # a round far from done halfway grows within its share, as a plain run does
    assert first_round(TrainConfig(), ["1234"] * SMALL_SET, tmp_path, deadline)[0].arch == "auto"  # auto decides
    for chosen in (TrainConfig(arch="cnn"), TrainConfig(length=4), TrainConfig(init_from="x.pth")):  # the user's call
        assert first_round(chosen, ["1234"] * 10, tmp_path, deadline)[0].arch == chosen.arch


def test_a_crnn_round_on_few_labels_of_one_length_mixes_in_generated_captchas(tmp_path):
    deadline = time.time() + 600
    few = ["1234"] * (SMALL_SET - 1)
    cfg, line = first_round(TrainConfig(), few, tmp_path, deadline)
    assert cfg.synthetic == SYNTHETIC_MIX and f"with {SYNTHETIC_MIX} generated captchas" in line
    assert first_round(TrainConfig(arch="crnn"), few, tmp_path, deadline)[0].synthetic == SYNTHETIC_MIX
    assert first_round(TrainConfig(synthetic=0), few, tmp_path, deadline)[0].synthetic == 0  # the user's call
    assert first_round(TrainConfig(synthetic=50), few, tmp_path, deadline)[0].synthetic == 50
    for cfg, texts in ((TrainConfig(), ["1234"] * SMALL_SET),  # enough labels
                       (TrainConfig(), ["1234", "12345"] * 10),  # generated captchas have one length
                       (TrainConfig(arch="cnn"), few),  # measured on the CRNN only
                       (TrainConfig(init_from="x.pth"), few)):  # a trained start
        cfg, line = first_round(cfg, texts, tmp_path, deadline)
        assert not cfg.synthetic and "generated" not in line
    later = selftrain.round_config(replace(TrainConfig(), out="m.pth"), tmp_path, 1, deadline)
    assert not later.synthetic  # the rounds with pseudo-labels have images enough


def test_a_crnn_round_on_few_labels_trains_at_its_own_rate_unless_told(tmp_path):
    deadline = time.time() + 600
    few = ["1234"] * (SMALL_SET - 1)
    cfg, line = first_round(TrainConfig(), few, tmp_path, deadline)
    assert cfg.lr == FIRST_LR and f"at learning rate {FIRST_LR:g}" in line
    assert first_round(TrainConfig(arch="crnn"), ["1234", "12345"] * 10, tmp_path, deadline)[0].lr == FIRST_LR
    assert first_round(TrainConfig(lr=5e-4), few, tmp_path, deadline)[0].lr == 5e-4  # the user's call
    for cfg, texts in ((TrainConfig(), ["1234"] * SMALL_SET), (TrainConfig(arch="cnn"), few),
                       (TrainConfig(init_from="x.pth"), few)):
        cfg, line = first_round(cfg, texts, tmp_path, deadline)
        assert cfg.lr is None and "learning rate" not in line  # the family's default, resolved by train()
    later = selftrain.round_config(replace(TrainConfig(), out="m.pth"), tmp_path, 1, deadline)
    assert later.lr is None


def test_rounds_save_their_trained_weights_unless_ema_is_given(tmp_path):
    deadline = time.time() + 600
    for arch in ("auto", "crnn", "cnn"):
        base = TrainConfig(arch=arch, out="m.pth")
        assert first_round(base, ["1234"] * 10, tmp_path, deadline)[0].ema == 0  # the CRNN's default is not taken
        assert selftrain.round_config(base, tmp_path, 1, deadline).ema == 0
    assert selftrain.round_config(TrainConfig(ema=0.99, out="m.pth"), tmp_path, 2, deadline).ema == 0.99


@pytest.mark.slow
def test_an_untrained_model_falls_back_to_labelled_only_and_says_so(digits_dir, tmp_path, capsys, monkeypatch):
    generate(tmp_path / "pool", 40, seed=23, show=False)
    unlabelled_copy(tmp_path / "pool", tmp_path / "unl", 40)
    rounds, results = [], []  # each round's training settings and results

    def second_try_reads_the_same(cfg, events, **kw):  # round 0's second try ends where the first did: a tie
        rounds.append(cfg)
        results.append(results[0] if len(rounds) == 2 else train_supervised(cfg, events, **kw))
        return results[-1]

    monkeypatch.setattr(selftrain, "train_supervised", second_try_reads_the_same)
    result = train(TrainConfig(data=[str(digits_dir)], unlabelled=str(tmp_path / "unl"), epochs=1,
                               out=str(tmp_path / "m.pth"), plot="none", show_errors=0, from_scratch=True))
    out = capsys.readouterr().out  # one epoch from random weights: untrained
    assert "pseudo-labels are not confident enough: keeping round 0 (labelled images only)" in out
    assert result.advice and out.count("no better than guessing") == 1  # said once, of the round kept, at the end
    assert out.rstrip().endswith(result.advice)
    ckpt = load_checkpoint(tmp_path / "m.pth")
    assert [r["round"] for r in result.rounds] == [0] and ckpt["self_training"][0]["kept"] == 0
    assert "as a CRNN (with 64 labels" in out and rounds[0].arch == "crnn"  # few labels: a CRNN reads them
    assert rounds[0].synthetic == SYNTHETIC_MIX
    # round 0 trained once more, from another seed on the same validation split; a tie keeps the first
    assert f"round 0 once more from seed {AGAIN_SEED}" in out and "second try reads the validation split no " \
        "better: the first goes on" in out
    assert ckpt["self_training"][0]["tries"] == 2 and ckpt["self_training"][0]["kept_try"] == 1
    assert ckpt["config"]["seed"] == 0
    assert len(rounds) == 2 and rounds[1] == replace(rounds[0], seed=AGAIN_SEED, split_seed=0, out=rounds[1].out,
                                                     time_budget=rounds[1].time_budget)
    assert rounds[1].time_budget <= rounds[0].time_budget
    assert 0.9 * FIRST_SHARE * 10 < rounds[0].time_budget <= FIRST_SHARE * 10  # its share of the 10 minutes
    assert not (tmp_path / ".m-rounds").exists()  # the rounds' files are gone


@pytest.mark.slow
def test_a_good_model_trains_on_its_stable_pseudo_labels(tmp_path, capsys):
    labelled, truth = labelled_and_pool(tmp_path)
    shipped = str(ROOT / "captcha_recognize.pth")  # a good reader of these captchas to start each round from
    result = train(TrainConfig(data=[str(labelled)], unlabelled=str(tmp_path / "unl"), rounds=1, epochs=2, lr=1e-3,
                               init_from=shipped, img_size=(60, 24), val_split=0.25, batch_size=16,
                               out=str(tmp_path / "m.pth"), plot="none", show_errors=0))
    r1 = result.rounds[1]
    assert r1["pseudo"] >= 20  # most of the pool read stably
    right = sum(truth[f] == t for f, t in zip(r1["pseudo_files"], r1["pseudo_labels"]))
    assert right >= 0.9 * r1["pseudo"]  # and those readings are right
    ckpt = load_checkpoint(tmp_path / "m.pth")
    assert ckpt["config"]["unlabelled"] == str(tmp_path / "unl") and len(ckpt["self_training"]) == 2
    history = ckpt["self_training"]
    kept = 1 if history[1]["val"] >= history[0]["val"] else 0  # round 1 is kept when it validates as well
    assert history[1]["kept"] == kept and result.rounds[-1]["kept"] == kept
    kept_val = history[kept]["val"]
    assert result.best["sequence_accuracy"] == kept_val and ckpt["best"]["sequence_accuracy"] == kept_val
    out = capsys.readouterr().out
    assert f"{r1['pseudo']} of 60 unlabelled captchas read the same" in out
    assert out.count("not --img-size 60x24") == 1  # said by round 0, not again by each round after it
    assert out.count("arch auto: crnn, as the --init-from checkpoint is one") == 1


@pytest.mark.slow
def test_a_bad_first_draw_of_round_0_is_trained_again_and_the_better_one_goes_on(tmp_path, capsys, monkeypatch):
    labelled, _ = labelled_and_pool(tmp_path)
    seeds = []  # each round's seed

    def first_draw_untrained(cfg, events, **kw):  # the first draw of round 0 starts from nothing and trains one epoch
        seeds.append(cfg.seed)
        return train_supervised(replace(cfg, init_from=None, epochs=1) if len(seeds) == 1 else cfg, events, **kw)

    monkeypatch.setattr(selftrain, "train_supervised", first_draw_untrained)
    result = train(TrainConfig(data=[str(labelled)], unlabelled=str(tmp_path / "unl"), rounds=1, epochs=2, lr=1e-3,
                               init_from=str(ROOT / "captcha_recognize.pth"), val_split=0.25, batch_size=16,
                               out=str(tmp_path / "m.pth"), plot="none", show_errors=0))
    out = capsys.readouterr().out
    assert seeds == [0, AGAIN_SEED, 0]  # round 0, round 0 again, round 1
    assert sum(ln.startswith("round 1: ") for ln in out.splitlines()) == 2  # the pool read after each draw
    assert [h["round"] for h in result.rounds] == [0, 1] and result.rounds[0]["tries"] == 2
    assert result.rounds[0]["kept_try"] == 2 and "round 0's second try reads the validation split better" in out
    assert result.rounds[0]["val"] > 0.5 and result.rounds[1]["pseudo"] >= 20  # the second draw's readings


def test_rounds_start_while_a_share_of_the_budget_is_left_whatever_round_0_took():
    budget = 600.0  # seconds; a pseudo-label round took about 150 s of it on captcha-images-v2
    assert selftrain.round_fits(selftrain.ROUND_SHARE * budget, budget)
    assert not selftrain.round_fits(selftrain.ROUND_SHARE * budget - 1, budget)
    # round 0's second try leaves that share and one more reading of the pool to the round after it
    assert selftrain.again_seconds(240.0, 340.0, budget, 20.0) == pytest.approx(340 - 150 - 20)
    assert selftrain.again_seconds(240.0, 600.0, budget, 20.0) == 240.0  # never more than the first try had
    assert selftrain.again_seconds(240.0, 280.0, budget, 20.0) == 0.0  # too short to be worth a try


@pytest.mark.slow
def test_a_round_0_slower_than_the_time_left_does_not_stop_the_next_round(tmp_path, capsys, monkeypatch):
    labelled, _ = labelled_and_pool(tmp_path)
    calls = []

    def round_0_took_long(cfg, events, **kw):  # round 0 says it took longer than the whole budget
        calls.append(cfg)
        result = train_supervised(cfg, events, **kw)
        return replace(result, seconds=3600.0) if len(calls) == 1 else result

    monkeypatch.setattr(selftrain, "train_supervised", round_0_took_long)
    result = train(TrainConfig(data=[str(labelled)], unlabelled=str(tmp_path / "unl"), rounds=1, epochs=2, lr=1e-3,
                               init_from=str(ROOT / "captcha_recognize.pth"), val_split=0.25, batch_size=16,
                               out=str(tmp_path / "m.pth"), plot="none", show_errors=0))
    assert "of the time budget is left" not in capsys.readouterr().out
    assert [h["round"] for h in result.rounds] == [0, 1] and len(calls) == 2


def test_unlabelled_images_that_copy_a_labelled_one_are_left_out(digits_dir, tmp_path):
    from captcha_recognize.training.selftrain import read_unlabelled
    generate(tmp_path / "pool", 3, seed=24, show=False)
    truth = unlabelled_copy(tmp_path / "pool", tmp_path / "unl", 3)
    (tmp_path / "unl" / "copy.png").write_bytes(sorted(digits_dir.iterdir())[0].read_bytes())  # a labelled image again
    images, paths = read_unlabelled(str(tmp_path / "unl"), False, [str(digits_dir)])
    assert sorted(p.name for p in paths) == sorted(truth) and len(images) == 3


@pytest.mark.slow
@pytest.mark.parametrize("change, kept", [(0.0, 1), (-0.25, 0)])
def test_a_round_is_kept_when_it_validates_as_well_and_dropped_when_worse(tmp_path, capsys, monkeypatch, change, kept):
    """Round 1's validation score set to round 0's (kept: the pseudo-labels did no harm) or a quarter under
    it (dropped): the output holds the weights of the round kept, and a drop is said."""
    import shutil
    labelled, _ = labelled_and_pool(tmp_path)
    saved, vals = {}, []  # each round's checkpoint, copied before the rounds' folder goes; its score

    def round_scored(cfg, events, **kw):
        result = train_supervised(cfg, events, **kw)
        if vals:  # round 1: scored relative to round 0
            result.best["sequence_accuracy"] = vals[0] + change
        vals.append(result.best["sequence_accuracy"])
        saved[len(saved)] = shutil.copy(result.out, tmp_path / f"round{len(saved)}.pth")
        return result

    monkeypatch.setattr(selftrain, "train_supervised", round_scored)
    result = train(TrainConfig(data=[str(labelled)], unlabelled=str(tmp_path / "unl"), rounds=1, epochs=2, lr=1e-3,
                               init_from=str(ROOT / "captcha_recognize.pth"), val_split=0.25, batch_size=16,
                               out=str(tmp_path / "m.pth"), plot="none", show_errors=0))
    out = capsys.readouterr().out
    assert len(vals) == 2 and [h["round"] for h in result.rounds] == [0, 1]
    ckpt = load_checkpoint(tmp_path / "m.pth")
    assert result.rounds[-1]["kept"] == kept and ckpt["self_training"][-1]["kept"] == kept
    assert result.best["sequence_accuracy"] == vals[kept]
    mine, theirs = ckpt["model"], load_checkpoint(saved[kept])["model"]
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # the kept round's weights, not the last's
    assert ("round 1 read the validation split worse" in out) == (kept == 0)
    assert f"kept round {kept}: validation sequence accuracy" in out
