"""How long training runs: the budget, the grown and extension cycles and the retry of a run stuck at chance."""
from __future__ import annotations

import random
import re
import shutil
from dataclasses import replace

import pytest
import torch

from captcha_recognize.training import loop, plan, recipe, state
from captcha_recognize.reading.checkpoint import load_checkpoint
from conftest import ROOT
from captcha_recognize.training import TrainConfig, train


def test_default_budget_grows_with_the_images_from_a_floor():
    assert plan.default_budget(100) == plan.MIN_BUDGET
    assert plan.default_budget(1440) == pytest.approx(1.44 * plan.BUDGET_PER_1000)


def test_epochs_in_budget_shortens_only_what_would_overrun():
    assert plan.epochs_in_budget(20, 1, 10.0, 1000.0) == 20
    assert plan.epochs_in_budget(20, 1, 10.0, 55.0) == 6  # 1 done + 5 more fit
    assert plan.epochs_in_budget(20, 1, 10.0, 0.0) == 2  # at least one more epoch


def test_recent_pace_is_the_median_of_the_latest_epochs():
    assert plan.recent_pace([9.0, 1.0, 2.0, 4.0, 3.0]) == 3.0
    assert plan.recent_pace([5.0]) == 5.0 and plan.recent_pace([]) == 0.0


@pytest.mark.slow
def test_a_run_whose_epochs_slow_down_is_shortened_at_a_later_check(digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipe, "default_epochs", lambda *a, **k: 20)
    monkeypatch.setattr(plan, "REFIT_SHARE", 0.25)  # checks after epochs 1, 5, 10 and 15
    monkeypatch.setattr(plan, "recent_pace", lambda times: 0.01 if len(times) < 5 else 1e4)
    monkeypatch.setattr(plan, "still_improving", lambda *a: False)
    result = train(TrainConfig(data=[str(digits_dir)], arch="cnn", out=str(tmp_path / "m.pth"), plot="none",
                               show_errors=0))
    assert "holds 6 of the 20 planned epochs" in capsys.readouterr().out  # epoch 5 finds no time for more
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(tmp_path / "m.pth")["config"]["epochs"] == 6


def test_grown_epochs_fill_the_budget_only_when_far_from_done():
    times = [30.0, 10.0, 12.0, 11.0]  # the first epoch's one-off costs are not counted: median 11 s
    assert plan.grown_epochs(8, 4, 0.975, times, 100.0) == 8  # reads well: the plan stands
    assert plan.grown_epochs(8, 4, 0.95, times, 100.0) == 4 + 9  # not yet: what 100 s hold
    assert plan.grown_epochs(8, 4, 0.50, times, 100.0) == 4 + 9  # far from done: what 100 s hold
    assert plan.grown_epochs(8, 4, 0.50, times, 20.0) == 8  # never shorter than planned
    assert plan.grown_epochs(8, 4, 0.50, times, 1000.0) == 3 * 8  # nor longer than 3 times the plan


@pytest.mark.parametrize("scores, improving", [
    ([0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.92, 0.95], True),  # the last quarter beats all before by one image
    ([0.1, 0.5, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95], False),  # flat at the end
    ([0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0], False),  # perfect: nothing left to gain
    ([0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.91], False),  # gained less than one image of 20
])
def test_still_improving_needs_a_gain_of_one_validation_image(scores, improving):
    assert plan.still_improving(scores, 2, 1 / 20) is improving


def test_the_reason_a_schedule_ended_is_said():
    assert plan.stop_reason([], 3, 0).startswith("the planned epochs are done (no validation images")
    assert plan.stop_reason([0.5, 1.0, 0.9], 1, 10) == "validation read every image right (epoch 2)"
    assert plan.stop_reason([0.5, 0.9], 3, 10).startswith("the planned epochs are done (too few")
    assert plan.stop_reason([0.5, 0.9, 0.8, 0.9, 0.9], 3, 10) == (
        "validation stopped improving (the last 3 epochs read no more images right than the best before them)")
    p = plan.Plan([plan.Cycle(1, 4, 1e-3)], 4, budget=1.0, n_val=10, times=[5.0])
    report = plan.EpochReport([{"sequence_accuracy": a} for a in (0.1, 0.2, 0.3, 0.9)], 5.0)
    assert isinstance(p.extend(4, report), plan.Note)  # improving, but no time left for another cycle
    assert p.ending == "the time budget is spent while validation still improves"


def test_at_chance_is_guessing_with_a_loss_that_did_not_fall():
    flat = [{"loss": 3.50, "character_accuracy": 0.03}, {"loss": 3.49, "character_accuracy": 0.04}]
    fell = [{"loss": 3.50, "character_accuracy": 0.03}, {"loss": 1.0, "character_accuracy": 0.04}]
    reads = [{"loss": 3.50, "character_accuracy": 0.03}, {"loss": 3.4, "character_accuracy": 0.5}]
    assert plan.at_chance(flat, 33, ctc=False) and not plan.at_chance(reads, 33, ctc=False)
    assert not plan.at_chance(fell, 33, ctc=False) and plan.at_chance(fell, 33, ctc=True)


def test_guessing_is_at_most_twice_the_characters_a_random_pick_gets():
    assert plan.guessing({"character_accuracy": 0.2}, 10)
    assert not plan.guessing({"character_accuracy": 0.21}, 10)
    assert not plan.guessing({"sequence_accuracy": -1.0}, 10)  # nothing validated yet
    assert not plan.guessing({"character_accuracy": 0.5}, 2)  # twice a random pick of 2 is every character


@pytest.mark.slow
def test_a_run_that_ends_guessing_says_what_the_user_can_do(tmp_path, capsys, monkeypatch):
    files = random.Random(1).sample(sorted((ROOT / "train_images").iterdir()), 500)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for f, name in zip(files, random.Random(0).sample([f.name for f in files], len(files))):
        shutil.copy(f, shuffled / name)  # every image named by another's text: nothing to learn
    cfg = TrainConfig(data=[str(shuffled)], arch="cnn", epochs=12, val_split=0.2, out=str(tmp_path / "m.pth"),
                      plot="none", show_errors=0)
    train(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "no better than guessing" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: the best model reads ")
    assert "guessing among 10: check that the file names are the texts in their images; if they are, these " \
           "captchas need more than 500 labelled images or more --epochs" in lines[0]
    monkeypatch.setattr(recipe, "default_epochs", lambda *a, **k: 12)
    train(replace(cfg, epochs=None, stretch=False))  # the epochs left to the budget
    assert "labelled images or a longer --time-budget" in capsys.readouterr().out
    train(replace(cfg, data=[str(f) for f in files], arch="auto", init_from=str(ROOT / "captcha_recognize.pth"),
                  epochs=1, lr=1e-4))  # the same images under their own names, to the shipped model: it reads them
    assert "no better than guessing" not in capsys.readouterr().out
    generated = train(TrainConfig(synthetic=64, alphabet="0123456789", length=4, arch="cnn", epochs=1,
                                  out=str(tmp_path / "g.pth"), plot="none", show_errors=0))
    assert plan.guessing(generated.best, 10)  # generated captchas only: no file names to check
    assert "no better than guessing" not in capsys.readouterr().out and not generated.advice


def test_slow_start_is_far_from_reading_the_characters_of_enough_validation_images():
    history = [{"loss": 9.0, "character_accuracy": 0.1}, {"loss": 5.0, "character_accuracy": 0.3}]
    assert plan.slow_start(history, 40) and not plan.slow_start(history, 39)
    assert not plan.slow_start(history[:1] + [{"loss": 2.0, "character_accuracy": 0.5}], 40)


def test_replan_keeps_the_step_and_lr_and_moves_the_end():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([w], lr=0.01)
    sched = state.one_cycle(opt, 0.01, 100)
    for _ in range(30):
        opt.step()
        sched.step()
    lr = opt.param_groups[0]["lr"]
    longer = state.replan(sched, 0.01, 200)
    assert opt.param_groups[0]["lr"] == lr and longer.last_epoch == 30 and longer.total_steps == 200
    for _ in range(169):
        opt.step()
        longer.step()  # the old plan would fail past 100 steps
    assert opt.param_groups[0]["lr"] < 1e-5  # annealed at the new end


@pytest.mark.slow
def test_a_run_still_improving_gets_another_cycle_within_its_budget(digits_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(plan, "still_improving", lambda *a: calls.append(a) or len(calls) == 1)
    result = train(TrainConfig(data=[str(digits_dir)], arch="cnn", epochs=4, out=str(tmp_path / "m.pth"),
                               plot="none", show_errors=0))
    out = capsys.readouterr().out
    assert "validation is still improving: 2 more epochs" in out
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6] and len(calls) == 2
    assert re.search(r"trained 6 epochs in [\d.]+s, as validation (stopped improving|read every image right)", out)
    assert load_checkpoint(tmp_path / "m.pth")["config"]["epochs"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("given, min_val", [({}, 0), ({"epochs": 4}, 0), ({"stretch": False}, 0), ({}, 40)])
def test_a_run_far_from_done_halfway_grows_its_planned_cycle(given, min_val, digits_dir, tmp_path, monkeypatch,
                                                              capsys):
    calls = []
    monkeypatch.setattr(plan, "STRETCH_MIN_VAL", min_val)  # digits_dir has 6 validation images
    monkeypatch.setattr(recipe, "default_epochs", lambda *a, **k: 4)
    monkeypatch.setattr(plan, "grown_epochs", lambda *a: calls.append(a) or 6)
    monkeypatch.setattr(plan, "still_improving", lambda *a: False)
    result = train(TrainConfig(data=[str(digits_dir)], arch="cnn", out=str(tmp_path / "m.pth"), plot="none",
                               show_errors=0, **given))
    grown = "halfway through the plan: the schedule grows from 4 to 6 epochs" in capsys.readouterr().out
    if given or min_val:  # a chosen --epochs, a run told not to grow (stretch=False) or one with
        # too few validation images to judge keeps its plan
        assert not grown and not calls and len(result.history) == 4
        return
    assert grown and [a[:2] for a in calls] == [(4, 2)]  # asked once, after epoch 2 of 4
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    ckpt = load_checkpoint(tmp_path / "m.pth")
    assert ckpt["config"]["epochs"] == 6 and ckpt["schedule"]["plan_epochs"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("averaged_better", [False, True])
def test_an_averaged_run_decides_on_growing_by_the_better_of_its_two_readings(averaged_better, digits_dir,
                                                                              tmp_path, monkeypatch):
    """The weight average lags behind the weights being trained early on and smooths their noise
    later: the run grows only when neither reads well."""
    seen, calls, validate = [], [], loop.validate

    def spy(model, *args):  # the trained weights read 0.5 (or 0.25), the average 0.25 (or 0.5)
        out = validate(model, *args)
        trained = any(p.requires_grad for p in model.parameters())
        out[0]["sequence_accuracy"] = 0.25 if trained == averaged_better else 0.5
        seen.append(trained)
        return out
    monkeypatch.setattr(loop, "validate", spy)
    monkeypatch.setattr(plan, "STRETCH_MIN_VAL", 0)
    monkeypatch.setattr(recipe, "default_epochs", lambda *a, **k: 4)
    monkeypatch.setattr(plan, "grown_epochs", lambda *a: calls.append((a[2], seen[-2:])) or 4)
    monkeypatch.setattr(plan, "still_improving", lambda *a: False)
    train(TrainConfig(data=[str(digits_dir)], arch="cnn", ema=0.999, out=str(tmp_path / "m.pth"), plot="none",
                      show_errors=0, quiet=True))
    [(acc, read)] = calls
    assert acc == 0.5 and sorted(read) == [False, True]  # judged by the better, after both were read


@pytest.mark.slow
def test_a_cnn_stuck_at_chance_starts_again_as_a_crnn(digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plan, "at_chance", lambda *a: True)
    monkeypatch.setattr(plan, "CHANCE_MIN_STEPS", 0)  # judge this short run too
    result = train(TrainConfig(data=[str(digits_dir)], arch="cnn", epochs=6, out=str(tmp_path / "m.pth"),
                               plot="none", show_errors=0))
    out = capsys.readouterr().out
    assert "after 5 epochs the cnn still reads the validation images no better than guessing: starting again " \
           "as a CRNN" in out
    assert result.config.arch == "crnn" and out.count("still reads the validation images no better") == 1  # once only
    assert load_checkpoint(tmp_path / "m.pth")["model_args"]["arch"] == "crnn"


@pytest.mark.slow
def test_the_check_for_chance_stays_where_the_first_plan_put_it_when_a_refit_shortens_the_plan(
        digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipe, "default_epochs", lambda *a, **k: 40)  # the check falls after epoch 12
    monkeypatch.setattr(plan, "at_chance", lambda *a: True)
    monkeypatch.setattr(plan, "CHANCE_MIN_STEPS", 0)
    monkeypatch.setattr(plan, "epochs_in_budget", lambda planned, done, *a: 20 if done >= 8 else planned)
    train(TrainConfig(data=[str(digits_dir)], arch="cnn", out=str(tmp_path / "m.pth"), plot="none", show_errors=0))
    out = capsys.readouterr().out
    assert "holds 20 of the 40 planned epochs" in out  # the refit after epoch 8
    assert "after 12 epochs the cnn still reads the validation images no better than guessing" in out


@pytest.mark.slow
@pytest.mark.parametrize("arch, chance, scratch", [("crnn", False, True), ("crnn", True, True), ("cnn", False, True),
                                                   ("crnn", False, False)])
def test_a_crnn_slow_to_start_starts_again_from_another_initialisation(arch, chance, scratch, digits_dir, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(plan, "at_chance", lambda *a: chance)
    monkeypatch.setattr(plan, "SLOW_MIN_VAL", 0)  # digits_dir has 6 validation images
    monkeypatch.setattr(plan, "SLOW_BELOW", 1.01)  # every run is slow
    monkeypatch.setattr(plan, "CHANCE_MIN_STEPS", 0)
    seeds = []
    build = state.build_network
    monkeypatch.setattr(state, "build_network", lambda *a: seeds.append(torch.initial_seed()) or build(*a))
    result = train(TrainConfig(data=[str(digits_dir)], arch=arch, epochs=6, seed=3, out=str(tmp_path / "m.pth"),
                               plot="none", show_errors=0, from_scratch=scratch))
    out = capsys.readouterr().out
    if arch == "cnn":  # the CNN is judged only at chance
        assert "starting again" not in out and seeds == [3] and len(result.history) == 6
        return
    read = "the validation images no better than guessing" if chance else "only"
    change = ("another initialisation" if scratch else "random weights") + " (seed 4)" + \
        (" at learning rate 0.00033" if chance else "")  # after the base model's weights: random ones
    line = next(ln for ln in out.splitlines() if ln.startswith("after 5 epochs the crnn still reads "))
    assert read in line and ("% of the validation characters" in line) != chance
    assert f"starting again from {change}" in out and out.count("starting again") == 1
    assert seeds == [3, 4] and result.config.seed == 4 and result.config.split_seed == 3 and result.config.from_scratch
    assert result.config.lr == pytest.approx(1e-3 / 3 if chance else 1e-3)
    alone = train(TrainConfig(data=[str(digits_dir)], arch=arch, epochs=1, seed=3, out=str(tmp_path / "n.pth"),
                              plot="none", show_errors=0))
    assert result.validation.names == alone.validation.names  # the same validation split
