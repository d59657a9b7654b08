"""What the benchmarks (``benchmarks/*.py``) share: the real datasets, their seeded splits, scoring a
model on a test split, the machine line, and writing a result table into ``docs/results.md`` under
the command that produced it."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import platform
import random
import re
import shlex
import sys
import tempfile
import threading
from datetime import date
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from captcha_recognize.data.folders import list_images, split_indices
from captcha_recognize.data.labels import parse_label, recurring_symbols
from captcha_recognize.reading.recognizer import CaptchaRecognizer, predict_files
from captcha_recognize.reading.scores import score
from captcha_recognize.runtime import PACKAGE_PARENT


def checkout() -> Path:
    """The checkout the benchmarks run from (beside ``../shared``): the folder above the running
    ``benchmarks/`` script, else the one that holds this package (an editable install)."""
    script = Path(sys.argv[0]).resolve()
    return script.parent.parent if script.parent.name == "benchmarks" else PACKAGE_PARENT


ROOT = checkout()
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {name: SHARED / name for name in (
    "percent4-digits", "captcha-images-v2", "rkn-securimage", "fssp-cyrillic", "capybara-digits", "bjtu-math",
    "amazon-letters", "seu-letters")}


def split_files(files: Sequence[Path], seed: int, n_train: int | None) -> tuple[list[Path], list[Path]]:
    """(training files, untouched test files) for one seed: 20% is held out as the test split,
    which does not depend on ``n_train``; the training files are the first ``n_train`` of a
    seeded shuffle of the rest (all of them for None)."""
    pool, test = split_indices(len(files), [0.2], seed)
    random.Random(seed + 1000).shuffle(pool)
    chosen = pool if n_train is None else pool[:n_train]
    return [files[i] for i in sorted(chosen)], [files[i] for i in test]


MODELS = ROOT / "bench_out" / "models"  # trained_model's cache


def start_key() -> str:
    """What a default training starts from, for ``trained_model``'s cache: the base model's weights
    (CRNN runs start from them), so a new base model trains the cached models anew."""
    from captcha_recognize.reading.checkpoint import load_checkpoint
    from captcha_recognize.reading.spec import BASE_CHECKPOINT
    return load_checkpoint(BASE_CHECKPOINT)["weights_sha256"] if BASE_CHECKPOINT.is_file() else "random"


def trained_model(name: str, folder: Path, seed: int = 0, n_train: int | None = None) -> tuple[Path, list[Path]]:
    """(checkpoint, test files): the model the default command trains on ``folder``'s training split of
    ``seed`` (``split_files``: ``n_train`` of its 80%, all for None), and the 20% it never saw. Trained
    once and kept in ``bench_out/models/`` under a name that holds the split's file names and the base
    model's weights (``start_key``): delete it to train anew. A run trains in ``bench_out/models/training/``
    and moves there only when it has ended, so an interrupted one is resumed, never taken for a finished one."""
    from captcha_recognize.training import TrainConfig, train
    from captcha_recognize.training.config import last_path
    files = list_images([folder])
    train_files, test = split_files(files, seed, n_train)
    key = hashlib.sha256("\n".join([start_key(), *(f.name for f in train_files)]).encode()).hexdigest()[:12]
    out = MODELS / f"{name}-{len(train_files)}-seed{seed}-{key}.pth"
    if not out.exists():
        work = MODELS / "training" / out.name
        print(f"  {name}: training the default recipe on {len(train_files)} images (seed {seed}) into {out}",
              file=sys.stderr)
        work.parent.mkdir(parents=True, exist_ok=True)
        resume = "" if Path(last_path(str(work))).exists() else None
        train(TrainConfig(data=[str(f) for f in train_files], out=str(work), seed=seed, plot="none", quiet=True,
                          resume=resume))
        os.replace(work, out)
        Path(last_path(str(work))).unlink(missing_ok=True)
    return out, test


def validation_of(ckpt_path: Path) -> tuple[list[Path], list[str]]:
    """The files and labels the training of ``ckpt_path`` held out for validation (and calibration):
    its config's data read as training read it, split as training split it."""
    from captcha_recognize.data.folders import read_labelled
    from captcha_recognize.reading.checkpoint import load_checkpoint
    from captcha_recognize.reading.spec import ModelSpec
    from captcha_recognize.training.task import validation_indices
    ckpt = load_checkpoint(ckpt_path)
    cfg, spec = ckpt["config"], ModelSpec.from_checkpoint(ckpt)
    data = read_labelled(cfg["data"], cfg["alphabet"], spec.rules, cfg["recursive"])
    keep = [i for i, s in enumerate(data.labels) if spec.converter.accepts(s)]
    seed = cfg["seed"] if cfg.get("split_seed") is None else cfg["split_seed"]  # TrainConfig.val_seed
    _, va = validation_indices(len(keep), cfg["val_split"], seed)
    return [data.paths[keep[i]] for i in va], [data.labels[keep[i]] for i in va]


@functools.lru_cache(maxsize=None)
def folder_symbols(folder: Path) -> str:
    """The symbols that are label text in ``folder``'s names (``recurring_symbols``), as training reads them."""
    return recurring_symbols(list_images([folder]))


def true_label(path: str | os.PathLike) -> str | None:
    """The label a dataset file's name holds, read as training reads its folder (``3+4=.png``: ``3+4=``)."""
    return parse_label(path, symbols=folder_symbols(Path(path).parent.resolve()))


def test_score(rec: CaptchaRecognizer, test: Sequence[Path]) -> dict[str, Any]:
    """``score`` on ``test``, plus ``wrong``: the misread files as ``name->prediction``, and ``misread``:
    them as ``(path, label, prediction, confidence)`` for a contact sheet."""
    results = predict_files(rec, test)
    preds, labels = [r["prediction"] for r in results], [true_label(r["path"]) for r in results]
    misread = [(r["path"], t, p, r["confidence"]) for r, p, t in zip(results, preds, labels) if p != t]
    wrong = [f"{Path(path).name}->{p}" for path, _, p, _ in misread]
    return {**score(preds, labels), "wrong": wrong, "misread": misread}


def machine() -> str:
    """One line naming what a table was measured on: CPU, cores, PyTorch and the kernels it picked.

    Training follows a different floating-point path on CPUs with other vector kernels (AVX2,
    AVX512), so accuracies rerun elsewhere can differ by a few test images.
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"Machine: {cpu}, {os.cpu_count()} cores, PyTorch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} threads){gpu}")


OUTPUT_FLAGS = ("--markdown", "--errors")  # where results are written, not what is measured


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository root, without the
    ``OUTPUT_FLAGS`` that name where its results were written."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    args, kept = list(sys.argv[1:] if argv is None else argv), []
    while args:
        a = args.pop(0)
        if a in OUTPUT_FLAGS:
            args = args[1:]
        elif not a.startswith(tuple(f"{flag}=" for flag in OUTPUT_FLAGS)):
            kept.append(a)
    return " ".join(["python", str(script), *map(shlex.quote, kept)])


def write_section(path: str | os.PathLike, command: str, body: str) -> None:
    """Put ``body`` into the markdown file under a heading naming ``command``: a rerun of the same
    command replaces its own section and leaves the others alone. Written atomically."""
    path = Path(path)
    begin, end = f"<!-- begin: {command} -->", f"<!-- end: {command} -->"
    section = f"{begin}\n`{command}` ({date.today().isoformat()})\n\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else \
        "# Results\n\nEach table below is the output of the command above it.\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish(table: str, markdown: str | None, argv: Sequence[str] | None = None) -> int:
    """Print a benchmark's table and, with ``--markdown FILE``, write it there under its command."""
    print(table)
    if markdown:
        write_section(markdown, command_line(argv), table)
    return 0


@contextlib.contextmanager
def static_site(folders: dict[str, Path]) -> Iterator[str]:
    """A static HTTP server on a free 127.0.0.1 port serving each folder at ``/<name>/``; yields its URL."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in folders.items():
            (Path(tmp) / name).symlink_to(Path(folder).resolve())

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium and chromium-driver
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1160,700"]


def chromium(profile: Path) -> Any:
    """Headless Chromium driven by Selenium, with Debian's browser and driver: nothing is downloaded and
    no usage statistics are sent."""
    os.environ["SE_AVOID_STATS"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
