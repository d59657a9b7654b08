"""torchrun (DDP on Gloo), disjoint shards, interrupt + resume, and synthetic data."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_script
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.training.distributed import ProcessGroup as Dist, make_sampler


def test_ranks_see_disjoint_shards_reshuffled_each_epoch(monkeypatch):
    data = list(range(101))
    shards = {}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        sampler = make_sampler(data, Dist(), seed=0)
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            shards[rank, epoch] = list(sampler)
    for epoch in (1, 2):
        a, b = set(shards[0, epoch]), set(shards[1, epoch])
        assert not a & b and len(a) == len(b) == 50
    assert shards[0, 1] != shards[0, 2]
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert sorted(make_sampler(data, Dist(), seed=0)) == data  # one process sees everything


@pytest.mark.slow
def test_torchrun_two_processes_then_predict(digits_dir, tmp_path):
    out = tmp_path / "ddp.pth"
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "torch_model_train.py",
                   "--data", str(digits_dir), "--epochs", "3", "--batch-size", "8", "--device", "cpu",
                   "--plot", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stdout
    assert r.stdout.count("epoch 3/3 loss") == 1  # only rank 0 prints
    ckpt = load_checkpoint(out)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # same form as single-process
    r = run_script("torch_model_predict.py", str(digits_dir), "--checkpoint", str(out))
    assert r.returncode == 0 and "Accuracy 1:" in r.stdout


def final_loss(stdout: str) -> float:
    return float(re.findall(r"epoch (\d+)/\d+ loss ([\d.]+)", stdout)[-1][1])


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(digits_dir, tmp_path):
    common = ["torch_model_train.py", "--data", str(digits_dir), "--epochs", "10", "--batch-size", "16",
              "--plot", "none", "--no-augment"]
    full = run_script(*common, "--out", str(tmp_path / "full.pth"))
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "run.pth"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a shell without job control starts background jobs with SIGINT ignored; restore it
    proc = subprocess.Popen([sys.executable, *common, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "run_last.pth"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stdout and last.exists() and out.exists()
    stopped = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= stopped < 10
    load_checkpoint(out)  # the best checkpoint so far is intact

    resumed = run_script(*common, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at epoch {stopped + 1} of 10" in resumed.stdout
    assert f"epoch {stopped}/10" not in resumed.stdout and "epoch 10/10" in resumed.stdout
    assert not last.exists()
    assert abs(final_loss(resumed.stdout) - final_loss(full.stdout)) < 0.05 + 0.2 * final_loss(full.stdout)


@pytest.mark.slow
def test_sigterm_stops_training_like_ctrl_c(digits_dir, tmp_path):
    out, last = tmp_path / "run.pth", tmp_path / "run_last.pth"
    proc = subprocess.Popen([sys.executable, "torch_model_train.py", "--data", str(digits_dir), "--epochs", "50",
                             "--plot", "none", "--out", str(out)], cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.terminate()  # SIGTERM, as kill, timeout and job schedulers send
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: saved up to epoch" in stdout and "Traceback" not in stderr
    load_checkpoint(out)


@pytest.mark.slow
def test_synthetic_mode_without_a_folder_and_with_one(digits_dir, tmp_path):
    out = tmp_path / "syn.pth"
    r = run_script("torch_model_train.py", "--synthetic", "64", "--alphabet", "0123456789", "--length", "4",
                   "--epochs", "1", "--workers", "0", "--plot", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "64 training" in r.stdout
    ckpt = load_checkpoint(out)
    assert ckpt["alphabet"] == "0123456789" and ckpt["preprocess"]["width"] == 50
    r = run_script("torch_model_train.py", "--data", str(digits_dir), "--synthetic", "32", "--epochs", "1",
                   "--workers", "0", "--val-split", "0.25", "--plot", "none", "--out", str(tmp_path / "mix.pth"),
                   "--init-from", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "80 training / 16 validation" in r.stdout  # 48 real + 32 synthetic; validation stays real


def test_a_finished_rank_waits_for_the_others_before_leaving_the_group(monkeypatch):
    from captcha_recognize.training import distributed
    calls: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.ProcessGroup().close(finished=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    distributed.ProcessGroup().close()  # after an error the other ranks may never get there
    assert calls == ["destroy"]


def test_the_processes_share_each_steps_batch():
    from captcha_recognize.training.state import process_batch
    assert [process_batch(32, n) for n in (1, 2, 3, 4)] == [32, 16, 11, 8]
    assert process_batch(1, 4) == 1  # every process reads at least one image a step
