"""Service load: throughput and latency of ``torch_model_serve.py`` under concurrent clients, against
in-process ``CaptchaRecognizer.predict_batch`` and ddddocr on the same images, then a soak run.

Usage:
    python benchmarks/serve_load.py                          # four real datasets, 1/8/64 clients, 180 s soak
    python benchmarks/serve_load.py --datasets percent4-digits --soak 60 --clients 1 8 64 --duration 10
    python benchmarks/serve_load.py --quick                  # a few seconds on generated captchas
    python benchmarks/serve_load.py --markdown docs/results.md

The server runs as a child process on a free 127.0.0.1 port and serves one model per dataset: the
model the default training command makes from the set's training split (seed 0, 80% of the set;
trained once and kept in ``bench_out/models/``), and the clients send the 20% test split it never
saw (``--quick``: the shipped ``captcha_recognize.pth`` on generated captchas). The clients are a
load generator on plain asyncio streams in this process, each sending one image per request
(multipart) and waiting for the answer, for ``--duration`` seconds or ``--max-requests`` per
level; an answer counts as an error unless it is a 200 with the text the model reads in-process.
In-process rows: ``predict_batch`` over all of the dataset's test images, again and again (throughput,
a mean over the time, as the server rows are), and ``predict`` one image at a time (latency);
ddddocr (if installed) reads the same bytes one at a time. Each dataset's in-process throughput is
measured right before its server rows and again right after them, with the server idle, so that
a share of in-process throughput compares measurements of the same minutes. The
soak run keeps ``--soak-clients`` clients on all models for ``--soak`` seconds and samples the
server's resident memory.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlsplit

from captcha_recognize.bench import DATASETS, ROOT, machine, publish, trained_model, true_label

from captcha_recognize.cli.common import Parser, non_negative_float, positive_float, positive_int
from captcha_recognize.data.labels import infer_alphabet
from captcha_recognize.data.folders import list_images
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.serve.config import ServeConfig
from captcha_recognize.serve.process import server_process
from captcha_recognize.data.synthetic import generate

BOUNDARY = "captchaloadboundary"
SHIPPED = ROOT / "captcha_recognize.pth"


@dataclass
class Workload:
    """One dataset as the clients send it: multipart bodies and the texts the model reads in-process."""
    name: str
    model: Path
    blobs: list[bytes]
    expected: list[str]
    labels: list[str]
    bodies: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bodies = [multipart(b) for b in self.blobs]


def multipart(image: bytes) -> bytes:
    """One image as a multipart/form-data body (built once, so the clients spend little CPU)."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.png\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def workload(name: str, folder: Path) -> Workload:
    """A dataset's test images and the model that serves them: the one training makes from the rest
    (``trained_model``), or for generated captchas the shipped checkpoint on all of them."""
    if name == "generated":
        model, files = SHIPPED, list_images([folder])
    else:
        model, files = trained_model(name, folder)
    blobs = [f.read_bytes() for f in files]
    expected = [t for t, _ in CaptchaRecognizer(model).predict_batch(blobs)]
    return Workload(name, model, blobs, expected, [true_label(f) or "" for f in files])


def model_note(w: Workload) -> str:
    """Which model served ``w`` and how many of its images it reads right."""
    right = sum(e == t for e, t in zip(w.expected, w.labels))
    source = ("the shipped captcha_recognize.pth" if w.model == SHIPPED else
              "the default training command's model of the set's training split (seed 0)")
    return f"- {w.name}: {source}, reading {right} of the {len(w.blobs)} images sent right"


# ------------------------------------------------------------------------- measuring

@dataclass
class Run:
    """What one measurement saw."""
    latencies: list[float] = field(default_factory=list)  # seconds per answered request
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
        return {"requests": self.requests, "errors": len(self.errors), "img_s": self.requests / self.seconds,
                "p50": 1000 * q[49], "p99": 1000 * q[98]}


def request_bytes(host: str, model: str, body: bytes) -> bytes:
    """A whole HTTP/1.1 keep-alive request for one multipart body (built once per level)."""
    head = (f"POST /v1/recognize?model={quote(model)} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of the next answer on a keep-alive connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), None)
    if length is None:
        raise ValueError(f"an answer without Content-Length: {head[0]!r}")
    return int(head[0].split()[1]), await reader.readexactly(length)


async def client(address: tuple[str, int], requests: Sequence[bytes], expected: Sequence[str], k: int, stop: float,
                 budget: list[int], run: Run) -> None:
    """One client on its own connection: send image after image, each when the previous answer is back.
    Plain asyncio streams rather than an HTTP client library: the load generator shares the two cores
    with the server, and every millisecond it spends is one the server does not get. A failed request
    (refused connection, timeout, broken or wrong answer) is an error, and the next one connects anew."""
    i = k * 7919  # clients start at different images
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while time.perf_counter() < stop and budget[0] > 0:
            budget[0] -= 1
            j = i % len(requests)
            i += 1
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(30):
                    conn = conn or await asyncio.open_connection(*address)
                    conn[1].write(requests[j])
                    status, body = await response(conn[0])
                ok = status == 200 and json.loads(body)["results"][0]["text"] == expected[j]
                why = "" if ok else f"{status} {body[:80]!r}"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                    KeyError) as e:
                ok, why = False, f"{type(e).__name__}: {e}"[:100]
                if conn is not None:  # the connection's state is unknown: the next request opens a new one
                    conn[1].close()
                    conn = None
            run.latencies.append(time.perf_counter() - t0)
            if not ok:
                run.errors.append(why)
    finally:
        if conn is not None:
            conn[1].close()


async def load(url: str, works: Sequence[Workload], clients: int, seconds: float, max_requests: int) -> Run:
    """``clients`` concurrent clients, spread over the workloads, for ``seconds`` or ``max_requests``."""
    where = urlsplit(url)
    address = (where.hostname, where.port)
    requests = {w.name: [request_bytes(where.netloc, w.name, b) for b in w.bodies] for w in works}
    run, budget = Run(), [max_requests]
    t0 = time.perf_counter()
    stop = t0 + seconds
    await asyncio.gather(*(client(address, requests[w.name], w.expected, k, stop, budget, run)
                           for k, w in ((k, works[k % len(works)]) for k in range(clients))))
    run.seconds = time.perf_counter() - t0
    return run


def timed(fn: Callable[[bytes], Any], blobs: Sequence[bytes], seconds: float) -> Run:
    """``fn`` on one image after another (round robin) for about ``seconds``."""
    run, i, stop = Run(), 0, time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < stop:
        t = time.perf_counter()
        fn(blobs[i % len(blobs)])
        run.latencies.append(time.perf_counter() - t)
        i += 1
    run.seconds = time.perf_counter() - t0
    return run


def batch_throughput(rec: CaptchaRecognizer, blobs: Sequence[bytes], seconds: float) -> tuple[int, float]:
    """Images read and seconds taken by ``predict_batch`` over all of ``blobs``, again and again for
    about ``seconds`` (a mean over the whole time, as the server rows are)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or not n:
        rec.predict_batch(blobs)
        n += len(blobs)
    return n, time.perf_counter() - t0


def in_process(rec: CaptchaRecognizer, w: Workload, seconds: float) -> dict[str, Any]:
    """The latency of ``predict`` on single images for ``seconds`` / 2, then ``predict_batch``
    throughput over all images for ``seconds`` / 2."""
    rec.predict_batch(w.blobs[:64])
    single = timed(rec.predict, w.blobs, seconds / 2).row()
    images, took = batch_throughput(rec, w.blobs, seconds / 2)
    return {**single, "img_s": images / took, "images": images, "seconds": took}


def ddddocr_row(w: Workload, seconds: float) -> dict[str, Any] | None:
    """ddddocr reading the same bytes one at a time (restricted to the dataset's alphabet), or None."""
    try:
        import ddddocr
    except ImportError:
        return None
    ocr = ddddocr.DdddOcr(show_ad=False)
    ocr.set_ranges(infer_alphabet(w.expected) or "0123456789")
    ocr.classification(w.blobs[0])
    return timed(ocr.classification, w.blobs, seconds).row()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (``--workers``), from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS"))) / 1024
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


async def soak(url: str, pid: int, works: Sequence[Workload], clients: int, seconds: float,
               every: float) -> tuple[Run, list[tuple[float, float]]]:
    """Load for ``seconds`` in slices of ``every`` seconds, sampling the server's memory after each."""
    total, samples, t0 = Run(), [(0.0, rss_mb(pid))], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        part = await load(url, works, clients, min(every, seconds - (time.perf_counter() - t0)), 10 ** 9)
        total.latencies += part.latencies
        total.errors += part.errors
        samples.append((time.perf_counter() - t0, rss_mb(pid)))
    total.seconds = time.perf_counter() - t0
    return total, samples


# ---------------------------------------------------------------------------- report

def format_table(rows: list[dict[str, Any]]) -> str:
    head = "| dataset | reader | clients | requests | errors | img/s | p50 ms | p99 ms | of in-process img/s |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    base = {r["dataset"]: r["img_s"] for r in rows if r["reader"].startswith("in-process")}
    for r in rows:
        share = f"{100 * r['img_s'] / base[r['dataset']]:.0f}%" if r["dataset"] in base else "n/a"
        errors = r["errors"] if r["reader"] == "server" else "-"  # only the server's answers are checked
        lines.append(f"| {r['dataset']} | {r['reader']} | {r['clients']} | {r['requests']} | {errors} | "
                     f"{r['img_s']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {share} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], soaked: Run | None, samples: list[tuple[float, float]]) -> list[str]:
    """The issue's targets, each with its number and met / missed."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        base = next((r["img_s"] for r in rows if r["dataset"] == ds and r["reader"].startswith("in-process")), None)
        for r in rows:
            if r["dataset"] != ds or r["reader"] != "server":
                continue
            if r["clients"] == 64 and base:
                share = r["img_s"] / base
                out.append(f"- {ds}, 64 clients: {100 * share:.1f}% of in-process throughput (target >= 50%: "
                           f"{'met' if share >= 0.5 else 'missed'})")
            if r["clients"] == 8:
                out.append(f"- {ds}, 8 clients: p99 {r['p99']:.1f} ms (target < 50 ms: "
                           f"{'met' if r['p99'] < 50 else 'missed'})")
    if soaked is not None:
        rss = [m for _, m in samples]
        warm = rss[1] if len(rss) > 1 else rss[0]  # after the first slice: models and buffers are in place
        series = ", ".join(f"{t:.0f}s {m:.0f}" for t, m in samples[::max(1, len(samples) // 8)] + samples[-1:])
        r = soaked.row()
        out.append(f"- soak {soaked.seconds:.0f} s: {r['requests']} requests, {r['errors']} errors, "
                   f"{r['img_s']:.0f} img/s, p99 {r['p99']:.1f} ms; server RSS MB {series}; "
                   f"after the first slice {warm:.0f} -> {rss[-1]:.0f} MB ({rss[-1] - warm:+.0f} MB)")
        if soaked.errors:
            out.append(f"- first soak errors: {'; '.join(soaked.errors[:3])}")
    return out


# ------------------------------------------------------------------------------ main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few seconds on generated captchas (smoke run)")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), metavar="NAME",
                   default=["percent4-digits", "captcha-images-v2", "rkn-securimage", "fssp-cyrillic"],
                   help="sets under ../shared/data to serve")
    p.add_argument("--clients", nargs="+", type=positive_int, default=[1, 8, 64], metavar="N",
                   help="concurrent clients per level")
    p.add_argument("--duration", type=positive_float, default=10.0, metavar="S", help="seconds per level")
    p.add_argument("--max-requests", type=positive_int, default=50_000, metavar="N", help="requests per level at most")
    p.add_argument("--soak", type=non_negative_float, default=180.0, metavar="S", help="soak seconds (0: none)")
    p.add_argument("--soak-clients", type=positive_int, default=64, metavar="N", help="clients during the soak")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N", help="server processes")
    p.add_argument("--server-args", default="", metavar="FLAGS", help="extra torch_model_serve.py flags")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.soak = [1, 8], 1.0, min(args.soak, 3.0)
    return args


def measure(works: Sequence[Workload], args: argparse.Namespace, log: Path) -> tuple[list[dict], Run | None, list]:
    """Per dataset its in-process rows, then its server levels, then in-process throughput again, so that
    the share of in-process throughput compares measurements of the same minutes (the load the
    machine's other tenants put on it varies over minutes); then the soak."""
    rows: list[dict[str, Any]] = []
    server = ["--workers", str(args.workers), "--no-access-log", *args.server_args.split()]
    server += [a for w in works for a in ("--model", f"{w.name}={w.model}")]
    soaked, samples = None, []
    with server_process(server, log) as (url, proc):
        asyncio.run(load(url, works, 8, 1.0, 200))  # warm up
        for w in works:
            rec = CaptchaRecognizer(w.model)
            mine = in_process_rows(rec, w, args.duration)  # the server is idle meanwhile
            rows += mine
            for n in args.clients:
                r = asyncio.run(load(url, [w], n, args.duration, args.max_requests))
                rows.append({"dataset": w.name, "reader": "server", "clients": n, **r.row()})
                print(f"  {w.name}: {n} clients {rows[-1]['img_s']:.0f} img/s, p99 {rows[-1]['p99']:.1f} ms, "
                      f"{len(r.errors)} errors", file=sys.stderr)
            images, took = batch_throughput(rec, w.blobs, args.duration / 2)
            print(f"  {w.name}: in-process {images / took:.0f} img/s after the server rows", file=sys.stderr)
            batch = mine[0]  # its throughput: before and after together
            batch["img_s"] = (batch["images"] + images) / (batch["seconds"] + took)
        if args.soak:
            soaked, samples = asyncio.run(soak(url, proc.pid, works, args.soak_clients, args.soak,
                                               every=max(1.0, args.soak / 18)))
    return rows, soaked, samples


def in_process_rows(rec: CaptchaRecognizer, w: Workload, seconds: float) -> list[dict[str, Any]]:
    """ddddocr if it is installed, then ``predict_batch`` in this process (its throughput last, right
    before the server rows); the ``predict_batch`` row comes first in the table."""
    dd = ddddocr_row(w, seconds)
    rows = [{"dataset": w.name, "reader": "in-process predict_batch", "clients": "-", **in_process(rec, w, seconds)}]
    if dd:
        rows.append({"dataset": w.name, "reader": "ddddocr in-process", "clients": "-", **dd})
    print(f"  {w.name}: in-process {rows[0]['img_s']:.0f} img/s", file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.quick:
            generate(workdir / "generated", 64, seed=5, show=False)
            folders = {"generated": workdir / "generated"}
        else:
            folders = {k: DATASETS[k] for k in args.datasets if DATASETS[k].is_dir()}
            if not folders:
                print("error: none of the datasets is under ../shared/data", file=sys.stderr)
                return 1
        works = [workload(name, folder) for name, folder in folders.items()]
        rows, soaked, samples = measure(works, args, workdir / "server.log")
    d = ServeConfig()
    notes = [f"Server: {args.workers} worker process(es), default batching (--max-batch {d.max_batch}, "
             f"--max-wait-ms {d.max_wait_ms:g}) "
             f"{args.server_args}".rstrip() + "; clients: asyncio streams in the benchmark process on the same "
             "machine, one keep-alive connection each, one image per request (multipart); errors: not a 200 "
             "with the in-process text.",
             "In-process rows (the server idle): img/s of predict_batch over all of the images sent, again "
             "and again for --duration / 2 seconds right before the dataset's server rows and as long right "
             "after them; requests, p50 and p99: predict on one image at a time. "
             "ddddocr: one image at a time, bytes in, text out."]
    served = ["Models:", *map(model_note, works)]
    table = "\n".join([format_table(rows), "", *targets(rows, soaked, samples), "", *served, "", *notes, "",
                       machine()])
    return publish(table, args.markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
