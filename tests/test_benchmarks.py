"""Both benchmarks run in --quick mode, print a filled-in table and write it into a markdown file."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from captcha_recognize.bench import CHROMIUM
from conftest import ROOT, run_script


def benchmark(name: str):
    """The module of ``benchmarks/<name>.py``, loaded from its file (the scripts are no package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:]]  # without the header


def assert_names_machine(stdout: str) -> None:
    """The output has a line naming the machine the numbers were measured on."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("Machine: ")]
    assert len(lines) == 1, stdout[-2000:]
    line = lines[0]
    assert f", {os.cpu_count()} cores, PyTorch {torch.__version__} " in line
    assert f"({torch.backends.cpu.get_cpu_capability()} kernels, " in line


def run_quick(script: str, markdown) -> tuple:
    """A benchmark's --quick run that writes into ``markdown``: its result and its table's rows."""
    r = run_script(script, "--quick", "--markdown", str(markdown), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, table_rows(r.stdout)


def has_onnx() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@pytest.mark.slow
def test_accuracy_benchmark_quick(tmp_path):
    md = tmp_path / "results.md"
    r = run_script("benchmarks/accuracy.py", "--quick", "--archs", "cnn", "crnn", "auto", "--markdown", str(md),
                   "--errors", str(tmp_path / "errors"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = table_rows(r.stdout)
    archs = [row[1] for row in rows]
    assert "cnn" in archs and "crnn" in archs and any(a.startswith("auto (") for a in archs)
    base = next(row for row in rows if row[1] == "base model (zero-shot)")  # no training, the same test split
    assert base[2] == "0" and base[4] == "12" and re.fullmatch(r"\d+\.\d\d% / \d+\.\d\d%", base[5])
    for row in rows:
        if "(zero-shot)" not in row[1]:
            assert row[2] == "48" and row[4] == "12"  # 80% of 60 images trained on, 20% untouched
            assert re.fullmatch(r"\d+\.\d\d% / \d+\.\d\d%", row[5])
            assert len(row[6].split(" / ")) == 4 and row[9].endswith(" s") and row[10].endswith(" MB")
            assert re.fullmatch(r"\d+\.\d\d%", row[8]) or (row[8] == "n/a" and not has_onnx())
            assert re.fullmatch(r"\d+\.\d\d% / \d+\.\d\d%", row[11]) and re.fullmatch(r"\d+\.\d\d%", row[12])
            assert re.fullmatch(r"\d+\.\d\d%", row[13]) or (row[13] == "n/a" and row[12] == "0.00%")
    for arch in ("cnn", "crnn"):  # each seed's line names its misread test files, as many as it got wrong
        line = next(ln for ln in r.stderr.splitlines() if f" {arch} n=48 seed 0: " in ln)
        acc, wrong = re.search(r": (\d+\.\d\d)% in .*; wrong: (.*)$", line).groups()
        names = [] if wrong == "none" else wrong.split()
        assert all(re.fullmatch(r"\d{4}\.png->\S*", n) for n in names)
        assert len(names) == round(12 * (1 - float(acc) / 100))
        with Image.open(tmp_path / "errors" / f"generated-{arch}-48-seed0.png") as sheet:  # a picture of them
            assert sheet.width >= 160 and sheet.height >= 72 * max(1, math.ceil(len(names) / 6))
    assert_names_machine(r.stdout)
    text = md.read_text()  # the table under the command that made it (without where it was written)
    assert "`python benchmarks/accuracy.py --quick --archs cnn crnn auto` (" in text
    assert "--markdown" not in text and "--errors" not in text
    assert all(f"| generated | {a} | 48 |" in text for a in ("cnn", "crnn"))


@pytest.mark.slow
def test_accuracy_benchmark_zero_shot_reads_without_training(capsys):
    assert benchmark("accuracy").main(["--quick", "--zero-shot"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows and all(row[1].endswith("(zero-shot)") and row[2] == "0" for row in rows)
    base = next(row for row in rows if row[1] == "base model (zero-shot)")
    assert base[12] == "0.00%" and base[13] == "n/a"  # the base model accepts no reading of a site


def test_hidden_names_hold_only_the_sets_own_images(tmp_path):
    hide_names = benchmark("accuracy").hide_names
    pool = tmp_path / "unlabelled"
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    for i in range(3):
        (first / f"{i}12.png").write_bytes(b"png")
        (second / f"{i}34.jpg").write_bytes(b"jpg")
    hide_names(sorted(first.iterdir()), pool)
    truth = hide_names(sorted(second.iterdir()), pool)  # the next set, in the same folder
    assert sorted(p.name for p in pool.iterdir()) == sorted(truth) == ["img00000.jpg", "img00001.jpg", "img00002.jpg"]
    assert sorted(truth.values()) == ["034", "134", "234"]


def test_accuracy_benchmark_compares_with_scratch_only_where_a_start_differs(digits_dir, tmp_path, monkeypatch):
    accuracy = benchmark("accuracy")
    trained = []

    def fake_run(files, test, cfg, workdir, unlabelled=()):  # auto picks the CNN here
        trained.append((cfg.arch, cfg.from_scratch))
        return {"arch": "cnn" if cfg.arch in ("auto", "cnn") else cfg.arch, "sequence_accuracy": 1.0, "seconds": 1.0,
                "wrong": [], "note": ""}
    monkeypatch.setattr(accuracy, "run_one", fake_run)
    monkeypatch.setattr(accuracy, "summarize", lambda runs: {})
    monkeypatch.setattr(accuracy, "base_scores", lambda *a, **k: None)
    monkeypatch.setattr(accuracy, "ddddocr_scores", lambda *a: None)
    args = accuracy.parse_args(["--archs", "auto", "crnn", "--compare-scratch", "--seeds", "0"])
    rows = accuracy.bench_folder("digits", str(digits_dir), args, accuracy.TrainConfig(), tmp_path)
    assert [row[1] for row in rows] == ["auto (cnn)", "crnn", "crnn --from-scratch"]
    assert trained == [("auto", False), ("crnn", False), ("crnn", True)]  # the CNN is not trained again


@pytest.mark.slow
def test_accuracy_benchmark_passes_train_args_to_training():
    r = run_script("benchmarks/accuracy.py", "--quick", "--archs", "crnn", "--train-args=--ema 0.5 --bogus-flag",
                   timeout=600)
    assert r.returncode != 0 and "unrecognized arguments: --bogus-flag" in r.stderr


@pytest.mark.slow
def test_speed_benchmark_quick():
    browser = Path(CHROMIUM).exists() and (ROOT / "web" / "node_modules" / "onnxruntime-web").is_dir()
    r = run_script("benchmarks/speed.py", "--quick", "--archs", "cnn", *(["--browser"] if browser else []), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = table_rows(r.stdout)
    backends = [row[2] for row in rows]
    assert backends == (["torch", "onnx", "onnx int8"] if has_onnx() else ["torch"]) + \
        (["browser (onnxruntime-web)"] if browser else [])
    for row in rows:
        one_at_a_time, latency = float(row[7]), float(row[8])
        rounding = 0.5 + 1000 / latency * (0.006 / latency)  # the rate printed with no decimals, latency with 2
        assert row[3] == "50x22x3" and one_at_a_time == pytest.approx(1000 / latency, abs=rounding)
        assert row[5] == "n/a" if row[2].startswith("browser") else float(row[5]) > 0
        assert 35 < float(row[9]) < 45  # about 39 MFLOP per 50x22 image for the default CNN
    assert "fp32 matmul peak measured" in r.stdout
    assert_names_machine(r.stdout)


@pytest.mark.slow
def test_distributed_benchmark_quick(tmp_path):
    r = run_script("benchmarks/distributed.py", "--quick", "--epochs", "2", "--markdown", str(tmp_path / "r.md"),
                   timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = table_rows(r.stdout)
    assert [(row[1], row[2], row[3]) for row in rows] == [("1", "32 of 32", "2"), ("2", "16 of 32", "2")]
    assert all(0 <= float(row[6].rstrip("%")) <= 100 for row in rows)
    assert_names_machine(r.stdout)


@pytest.mark.parametrize("rerun", [False, True])
def test_markdown_sections_are_replaced_by_their_own_command_only(tmp_path, rerun):
    from captcha_recognize.bench import write_section
    md = tmp_path / "r.md"
    write_section(md, "python a.py", "| old a |")
    write_section(md, "python b.py --x 1", "| b |")
    write_section(md, "python a.py", "| new a |" if rerun else "| old a |")
    text = md.read_text()
    assert text.count("`python a.py`") == 1 and "| b |" in text
    assert ("| new a |" in text and "| old a |" not in text) if rerun else "| old a |" in text
    assert text.index("python a.py") < text.index("python b.py")  # a rerun keeps its place


@pytest.mark.slow
def test_contention_benchmark_quick(tmp_path):
    r = run_script("benchmarks/contention.py", "--quick", "--markdown", str(tmp_path / "r.md"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = table_rows(r.stdout)
    assert [row[0] for row in rows] == ["automatic (the default)", "libgomp default", "passive"]
    for row in rows:
        free, busy, slow = float(row[2]), float(row[3]), float(row[4].rstrip("x"))
        rounding = busy / free * (0.005 / free + 0.005 / busy) + 0.05  # the table's 2 and 1 decimals
        assert free > 0 and busy > 0 and abs(slow - busy / free) <= rounding
    assert_names_machine(r.stdout)
    assert "`python benchmarks/contention.py --quick`" in (tmp_path / "r.md").read_text()


def test_misread_sheets_of_a_dataset_given_as_a_folder_go_into_the_errors_folder():
    errors_sheet = benchmark("accuracy").errors_sheet
    assert errors_sheet("errs", "/data/other-site/", "auto", 1600, 0) == Path("errs/other-site-auto-1600-seed0.png")
    assert errors_sheet("errs", "rkn-securimage", "crnn", 400, 2) == Path("errs/rkn-securimage-crnn-400-seed2.png")
    assert errors_sheet("errs", ".", "cnn", 48, 0) == Path(f"errs/{Path.cwd().name}-cnn-48-seed0.png")


def test_the_simulated_labeller_counts_enter_or_the_text_and_enter():
    labelling = benchmark("labelling")
    keystrokes, reached = labelling.keystrokes, labelling.reached
    assert keystrokes("1234", "1234") == 1 and keystrokes("1235", "1234") == 5 and keystrokes(None, "b5pnn") == 6
    assert reached([(50, 0.9), (100, 0.985), (150, 0.99)], 0.98) == "100"
    assert reached([(50, 0.9), (100, 0.95), (150, 0.93)], 0.98) == "not reached (best 95.00% at 100)"


@pytest.mark.slow
def test_labelling_benchmark_quick(tmp_path):
    md, png = tmp_path / "results.md", tmp_path / "curves.png"
    r = run_script("benchmarks/labelling.py", "--quick", "--plot", str(png), "--markdown", str(md), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = table_rows(r.stdout)
    assert [row[2][:3] for row in rows] == ["(a)", "(b)", "(c)"]
    assert all(row[0] == "generated" and row[3] == "36" for row in rows)  # 80% of 60 is the pool; 36 labelled
    assert rows[0][4] == "5.00" and rows[0][5] == "–"  # no model: every 4-digit text typed, then Enter
    assert all(1 <= float(row[4]) <= 5 and re.fullmatch(r"\d+\.\d%", row[5]) for row in rows[1:])
    trainings = int(re.search(r"generated: (\d+) trainings", r.stderr)[1])
    assert 3 <= trainings <= 5  # (a)/(b) share theirs; (c) shares its first batch, random like theirs
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert_names_machine(r.stdout)
    assert "`python benchmarks/labelling.py --quick --plot " in md.read_text()
    assert "![labelling curves](curves.png)" in md.read_text()  # the plot shown beside its table


@pytest.mark.slow
def test_serve_load_benchmark_quick(tmp_path):
    md = tmp_path / "results.md"
    r, rows = run_quick("benchmarks/serve_load.py", md)
    readers = [(row[1], row[2]) for row in rows]
    assert ("in-process predict_batch", "-") in readers and ("server", "1") in readers and ("server", "8") in readers
    for row in rows:
        assert int(row[3]) > 0 and float(row[5]) > 0 and float(row[6]) <= float(row[7])
        assert row[4] == ("0" if row[1] == "server" else "-")  # every answer a 200 with the in-process text
    assert re.search(r"^- soak \d+ s: \d+ requests, 0 errors, .* server RSS MB 0s \d+", r.stdout, re.M)
    assert re.search(r"^- generated, 8 clients: p99 [\d.]+ ms \(target < 50 ms: (met|missed)\)", r.stdout, re.M)
    assert re.search(r"^- generated: the shipped captcha_recognize.pth, reading \d+ of the 64 images sent right$",
                     r.stdout, re.M)
    assert_names_machine(r.stdout)
    assert "`python benchmarks/serve_load.py --quick` (" in md.read_text()


def test_serve_load_clients_count_every_wrong_or_failed_answer():
    """The load generator's own HTTP client: a right answer counts, a wrong text, a non-200 and a
    closed connection are errors, and the clients reconnect after a broken connection."""
    import asyncio
    import json
    serve_load = benchmark("serve_load")
    Workload, load = serve_load.Workload, serve_load.load

    answers = [(200, "1234"), (200, "9999"), (500, "1234"), None, "no length", (200, "1234")]  # None: hang up
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            seen.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            if answer is None:
                writer.close()
                return
            if answer == "no length":  # nothing says where the answer ends: an error, and a new connection
                writer.write(b"HTTP/1.1 200 X\r\n\r\n{}")
                writer.close()
                return
            body = json.dumps({"results": [{"text": answer[1]}]}).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (answer[0], len(body), body))
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            w = Workload("m", ROOT / "x.pth", [b"png-bytes"], ["1234"], ["1234"])
            return await load(f"http://127.0.0.1:{port}", [w], 1, 10.0, 6)
    run = asyncio.run(main())
    assert run.requests == 6 and len(run.errors) == 4
    assert run.errors[0].startswith("200") and run.errors[1].startswith("500")
    assert "IncompleteReadError" in run.errors[2] and "without Content-Length" in run.errors[3]
    assert all(b"POST /v1/recognize?model=m HTTP/1.1" in s and s.endswith(b"png-bytes\r\n--captchaloadboundary--\r\n")
               for s in seen)


def test_a_benchmark_model_is_trained_once_on_the_training_split_alone(tmp_path, monkeypatch):
    """``bench.trained_model``: the default command's model of a set's training split, kept and reused,
    and the test files it returns are the ones training never saw."""
    import captcha_recognize.training
    from captcha_recognize import bench
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(50):
        (folder / f"{i:04d}.png").write_bytes(b"png")
    seen: list[list[str]] = []

    def fake_train(cfg):
        seen.append(cfg.data)
        Path(cfg.out).write_bytes(b"checkpoint")
    monkeypatch.setattr(bench, "MODELS", tmp_path / "models")
    monkeypatch.setattr(captcha_recognize.training, "train", fake_train)
    first, test = bench.trained_model("set", folder)
    again, test_again = bench.trained_model("set", folder)
    assert first == again and first.parent == tmp_path / "models" and first.read_bytes() == b"checkpoint"
    assert len(seen) == 1 and test == test_again and len(test) == 10  # trained once; 20% held out
    assert not {str(f) for f in test} & set(seen[0]) and len(seen[0]) == 40
    other, _ = bench.trained_model("set", folder, seed=1)
    assert other != first and len(seen) == 2  # another split, another model
    monkeypatch.setattr(bench, "start_key", lambda: "another base model")
    assert bench.trained_model("set", folder)[0] != first and len(seen) == 3  # another start, another model


def test_an_interrupted_benchmark_model_is_resumed_not_taken_for_finished(tmp_path, monkeypatch):
    import captcha_recognize.training
    from captcha_recognize import bench
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(50):
        (folder / f"{i:04d}.png").write_bytes(b"png")
    calls: list[str | None] = []

    def interrupted(cfg):
        calls.append(cfg.resume)
        Path(cfg.out).write_bytes(b"best so far")
        Path(cfg.out).with_name(Path(cfg.out).stem + "_last.pth").write_bytes(b"state")
        raise KeyboardInterrupt

    def finishing(cfg):
        calls.append(cfg.resume)
        Path(cfg.out).write_bytes(b"finished")
    monkeypatch.setattr(bench, "MODELS", tmp_path / "models")
    monkeypatch.setattr(captcha_recognize.training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.trained_model("set", folder)
    assert not list((tmp_path / "models").glob("*.pth"))  # only under training/
    monkeypatch.setattr(captcha_recognize.training, "train", finishing)
    ckpt, _ = bench.trained_model("set", folder)
    assert calls == [None, ""] and ckpt.read_bytes() == b"finished"  # the second call resumed the first
    assert not list((tmp_path / "models" / "training").iterdir())


def test_accept_rows_count_what_the_threshold_lets_through_and_name_each_target():
    accept = benchmark("accept")
    a = {"confidence": [0.99, 0.9, 0.8, 0.7], "right": [True, True, False, True], "accept": [True, True, True, False],
         "threshold": 0.75, "n_val": 10}
    r = accept.row("s", "all", 0, a)
    assert (r["accuracy"], r["coverage"], r["wrong_accepted"]) == (0.75, 0.75, 1)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["curve"] == [(0.25, 1.0), (0.5, 1.0), (0.75, pytest.approx(2 / 3)), (1.0, 0.75)]
    assert accept.targets([r]) == ["- accepted answers >= 99% right on every row: met on 0 of 1 (0 accepting nothing); "
                                   "missed: s all labels seed 0 66.67%"]
    good = accept.row("s", "200", 0, {**a, "right": [True] * 4, "accept": [True, True, True, False]})
    none = accept.row("s", "50", 0, {**a, "accept": [False] * 4, "threshold": 2.0})
    assert accept.targets([{**good, "precision": None, "recall": 0.0}])[0] == \
        "- s, 200 labels, seed 0 (read 100.00%): nothing accepted, recall 0.00% (target >= 95%: missed)"
    assert none["precision"] is None and accept.targets([good, none, r]) == [
        "- s, 200 labels, seed 0 (read 100.00%): precision 100.00% (target >= 99.5%: met), recall 75.00% "
        "(target >= 95%: missed)",
        "- accepted answers >= 99% right on every row: met on 2 of 3 (1 accepting nothing); "
        "missed: s all labels seed 0 66.67%"]
    assert "| none |" in accept.format_table([none])


@pytest.mark.slow
def test_accept_benchmark_calibrates_on_the_images_training_held_out(calibrated_ckpt, digits_dir, tmp_path):
    """``bench.validation_of`` finds the validation images training calibrated on: calibrating again on
    them gives the stored temperature and threshold."""
    from captcha_recognize.data.folders import list_images
    from captcha_recognize.reading.checkpoint import load_checkpoint
    accept = benchmark("accept")
    test = list_images([digits_dir])[:20]
    a = accept.answers(calibrated_ckpt, test, tmp_path)
    stored = load_checkpoint(calibrated_ckpt)
    assert a["n_val"] == stored["calibration"]["n"] == 128
    assert a["threshold"] == pytest.approx(stored["threshold"], rel=1e-9)
    assert len(a["right"]) == 20 and 0 < sum(a["right"])
    assert load_checkpoint(tmp_path / calibrated_ckpt.name)["temperature"] == pytest.approx(stored["temperature"])
