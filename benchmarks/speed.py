"""Prediction speed: folder throughput, single-image latency and share of the CPU's peak.

Usage:
    python benchmarks/speed.py                      # two real sets, both archs, torch + onnx
    python benchmarks/speed.py --quick              # small smoke run on generated captchas
    python benchmarks/speed.py --markdown docs/results.md

For each dataset and architecture it builds the model at the input size default training
picks for that dataset (weights do not change the speed, so they are freshly initialised),
then times, over the same image files:
  * folder prediction, whole pipeline: read + decode + preprocess + model + decode text
    (``recognizer.predict_files``), with PyTorch, ONNX Runtime, and ONNX Runtime on the int8
    export (``torch_model_export.py --int8``, calibrated on the same folder);
  * warm single-image latency through ``CaptchaRecognizer.predict`` (median), and its inverse, the
    images read per second one at a time;
  * with ``--browser``, the browser reader (``web/reader.js`` on onnxruntime-web in headless
    Chromium) reading the files one at a time;
  * the forward pass's achieved GFLOP/s against the measured fp32 matmul peak;
  * ddddocr (if installed) on the same files, output restricted to the dataset's alphabet.
"""
from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from captcha_recognize.bench import DATASETS, ROOT, chromium, machine, publish, static_site, true_label

import torch

from captcha_recognize.reading.checkpoint import untrained_checkpoint
from captcha_recognize.cli.common import Parser, positive_int
from captcha_recognize.data.preprocess import CHANNELS, Preprocess, auto_size, max_height
from captcha_recognize.data.labels import infer_alphabet
from captcha_recognize.data.folders import list_images, load_images
from captcha_recognize.reading.recognizer import CaptchaRecognizer, predict_files
from captcha_recognize.data.synthetic import generate


def matmul_peak(seconds: float = 1.0, n: int = 1024) -> float:
    """Measured fp32 matmul GFLOP/s with all of torch's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds x2 of one forward pass per image (conv, linear and GRU layers)."""
    total = [0.0]

    def conv(m, inp, out):
        total[0] += 2 * out.numel() / out.shape[0] * m.in_channels * m.kernel_size[0] * m.kernel_size[1] / m.groups

    def linear(m, inp, out):
        total[0] += 2 * out.numel() / out.shape[0] * m.in_features

    def gru(m, inp, out):
        t = inp[0].shape[1]  # batch_first: (B, T, F)
        for layer in range(m.num_layers):
            f_in = m.input_size if layer == 0 else m.hidden_size * (2 if m.bidirectional else 1)
            total[0] += (2 if m.bidirectional else 1) * t * 2 * 3 * (f_in + m.hidden_size) * m.hidden_size

    hooks = []
    for m in model.modules():
        fn = {torch.nn.Conv2d: conv, torch.nn.Linear: linear, torch.nn.GRU: gru}.get(type(m))
        if fn:
            hooks.append(m.register_forward_hook(fn))
    with torch.inference_mode():
        model(x[:1])
    for h in hooks:
        h.remove()
    return total[0]


def time_folder(rec: CaptchaRecognizer, files: Sequence[Path], repeats: int) -> float:
    """Best images/s of ``repeats`` whole-pipeline passes over ``files``."""
    predict_files(rec, files[:64])  # warm up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_files(rec, files)
        best = max(best, len(files) / (time.perf_counter() - t0))
    return best


def time_single(rec: CaptchaRecognizer, file: Path, n: int = 50) -> float:
    """Median warm latency of ``rec.predict(path)`` in milliseconds."""
    for _ in range(5):
        rec.predict(file)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        rec.predict(file)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def time_ddddocr(files: Sequence[Path], alphabet: str) -> float | None:
    """ddddocr images/s on the same files (bytes in, text out), or None if not installed."""
    try:
        import ddddocr
    except ImportError:
        return None
    ocr = ddddocr.DdddOcr(show_ad=False)
    ocr.set_ranges(alphabet)
    ocr.classification(files[0].read_bytes())
    t0 = time.perf_counter()
    for f in files:
        ocr.classification(f.read_bytes())
    return len(files) / (time.perf_counter() - t0)


def backends(ckpt: Path, folder: str, pre: Preprocess, workdir: Path) -> list[tuple[str, CaptchaRecognizer]]:
    """PyTorch, and where onnx/onnxruntime are installed the fp32 and int8 ONNX exports."""
    out = [("torch", CaptchaRecognizer(ckpt))]
    try:
        from captcha_recognize.reading.export import calibration_arrays, export_onnx, quantize_int8
        onnx = export_onnx(ckpt, workdir / f"{ckpt.stem}.onnx")
        int8 = quantize_int8(onnx, workdir / f"{ckpt.stem}.int8.onnx", calibration_arrays([folder], pre))
        out += [("onnx", CaptchaRecognizer(onnx)), ("onnx int8", CaptchaRecognizer(int8))]
    except ImportError:
        print("note: onnx/onnxruntime not installed; ONNX rows skipped", file=sys.stderr)
    return out


BROWSER_READ = """
const [model, urls, done] = arguments;
(async () => {
  const { loadModel } = await import("/web/reader.js");
  const reader = await loadModel(model);
  await reader.read(urls[0]);
  const t0 = performance.now();
  for (const url of urls) await reader.read(url);
  return urls.length / ((performance.now() - t0) / 1000);
})().then(done, (e) => done({ error: String(e) }));
"""


def time_browser(onnx: Path, files: Sequence[Path], workdir: Path, n: int = 200) -> float:
    """Images/s of the browser reader (``web/reader.js`` on onnxruntime-web in headless Chromium), one
    image at a time, each fetched from a local server, decoded, preprocessed and read."""
    driver = chromium(workdir / "chromium-profile")
    try:
        with static_site({"web": ROOT / "web", "model": onnx.parent, "images": Path(files[0]).parent}) as url:
            driver.set_script_timeout(600)
            driver.get(f"{url}/web/index.html")
            rate = driver.execute_async_script(BROWSER_READ, f"{url}/model/{onnx.name}",
                                               [f"{url}/images/{f.name}" for f in files[:n]])
    finally:
        driver.quit()
    if isinstance(rate, dict):
        raise RuntimeError(f"the browser reader failed: {rate['error']}")
    return rate


def bench_dataset(name: str, folder: str, archs: Sequence[str], repeats: int, peak: float,
                  workdir: Path, browser: bool = False) -> list[dict[str, Any]]:
    files = list_images([folder])
    images, _ = load_images(files)
    labels = [true_label(f) for f in files]
    alphabet, length = infer_alphabet(labels), max(len(s) for s in labels)
    dddd = time_ddddocr(files, alphabet)
    rows = []
    for arch in archs:
        sizes = [im.size for im in images]
        w, h = auto_size(sizes, max_height(arch, sizes))
        pre = Preprocess(w, h, CHANNELS[arch])
        ckpt = untrained_checkpoint(workdir / f"{name}-{arch}.pth", arch, alphabet, length, pre)
        flops = None
        row = {"dataset": name, "arch": arch, "input": f"{w}x{h}x{pre.channels}", "images": len(files), "dddd": dddd}
        for backend, r in backends(ckpt, folder, pre, workdir):
            flops = flops or forward_flops(r.model.net, torch.zeros(1, pre.channels, h, w))
            ips = time_folder(r, files, repeats)
            rows.append({**row, "backend": backend, "img_s": ips, "latency_ms": time_single(r, files[0]),
                         "mflops": flops / 1e6, "peak_pct": 100 * flops * ips / 1e9 / peak})
            print(f"  {name} {arch} {backend}: {ips:.0f} img/s", file=sys.stderr)
        if browser:
            rate = time_browser(workdir / f"{ckpt.stem}.onnx", files, workdir)
            rows.append({**row, "backend": "browser (onnxruntime-web)", "img_s": None, "latency_ms": 1000 / rate,
                         "mflops": flops / 1e6, "peak_pct": None})
            print(f"  {name} {arch} browser: {rate:.0f} img/s one at a time", file=sys.stderr)
    return rows


def format_table(rows: list[dict[str, Any]], peak: float) -> str:
    head = ("| dataset | arch | backend | input | images | img/s (whole pipeline, batched) | x ddddocr | one at a "
            "time: img/s | latency ms | MFLOP/img | % of fp32 peak | ddddocr img/s (one at a time) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        dd = f"{r['dddd']:.0f}" if r["dddd"] else "n/a"
        batched = f"{r['img_s']:.0f}" if r["img_s"] else "n/a"
        ratio = f"{r['img_s'] / r['dddd']:.1f}x" if r["dddd"] and r["img_s"] else "n/a"
        peak_pct = f"{r['peak_pct']:.0f}%" if r["peak_pct"] is not None else "n/a"
        lines.append(f"| {r['dataset']} | {r['arch']} | {r['backend']} | {r['input']} | {r['images']} | {batched} | "
                     f"{ratio} | {1000 / r['latency_ms']:.0f} | {r['latency_ms']:.2f} | {r['mflops']:.0f} | "
                     f"{peak_pct} | {dd} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", machine(), f"fp32 matmul peak measured: {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads; "
                             f"peak memory (RSS) of this process: {rss:.0f} MB"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small smoke run on generated captchas")
    p.add_argument("--datasets", nargs="+", default=["percent4-digits", "captcha-images-v2"], choices=list(DATASETS),
                   metavar="NAME", help="real sets under ../shared/data to time")
    p.add_argument("--archs", nargs="+", default=["cnn", "crnn"], help="architectures to time")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="N", help="timed passes per row (best is kept)")
    p.add_argument("--browser", action="store_true",
                   help="also time the browser reader (web/reader.js) in headless Chromium: needs Debian's chromium "
                        "and chromium-driver, and cd web && npm ci")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.quick:
            generate(workdir / "quick", 64, seed=3, show=False)
            datasets, args.repeats = {"generated": str(workdir / "quick")}, 1
        else:
            datasets = {k: str(DATASETS[k]) for k in args.datasets if DATASETS[k].is_dir()}
            if not datasets:
                print("error: no dataset found under ../shared/data", file=sys.stderr)
                return 1
        peak = matmul_peak()
        rows = []
        for name, folder in datasets.items():
            rows += bench_dataset(name, folder, args.archs, args.repeats, peak, workdir, args.browser)
        table = format_table(rows, peak)
    return publish(table, args.markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
