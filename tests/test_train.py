"""Training pieces: the default number of epochs, the best-epoch rule, the weight average (EMA) that
--ema validates and saves, and train() called from Python."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import run_script
from training import EMA, TrainConfig, default_epochs, is_best, train


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
def test_train_with_ema_saves_the_averaged_weights(digits_dir, tmp_path):
    common = ["torch_model_train.py", "--data", str(digits_dir), "--epochs", "2", "--batch-size", "16",
              "--val-split", "0", "--plot", "none"]
    raw, avg = tmp_path / "raw.pth", tmp_path / "ema.pth"
    r = run_script(*common, "--out", str(raw))
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
    cfg = TrainConfig(data=[str(digits_dir)], arch="crnn", batch_size=16, plot="none", out=str(tmp_path / "m.pth"),
                      quiet=True)
    before = dataclasses.replace(cfg)
    result = train(dataclasses.replace(cfg, epochs=2))
    assert cfg == before  # nothing written back into the caller's config
    assert result.out == tmp_path / "m.pth" and result.out.is_file()
    assert result.config.epochs == 2 and result.config.splice is not None  # resolved: 0.5 or 0.0
    assert len(result.history) == 2 and result.best["epoch"] in (1, 2)
    saved = load_checkpoint(result.out)["config"]
    assert saved["arch"] == "crnn" and saved["epochs"] == 2 and saved["splice"] == result.config.splice
