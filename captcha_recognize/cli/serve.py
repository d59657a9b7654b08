"""The ``torch_model_serve.py`` command line (console script ``captcha-serve``)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from captcha_recognize.cli.common import Parser, non_negative_float, port, positive_float, positive_int, run
from captcha_recognize.device import pick_device
from captcha_recognize.errors import ConfigError
from captcha_recognize.reading.spec import model_path
from captcha_recognize.runtime import check_port
from captcha_recognize.serve.config import CONFIG_ENV, MODEL_NAME, MULTIPROC_ENV, ServeConfig, config_to_env

WORKER_START_S = 120  # a worker importing torch on a busy machine misses uvicorn's 5 s health pings


def model_arg(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; the PATH ``base`` is the shipped base model."""
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if not MODEL_NAME.match(name):
        raise argparse.ArgumentTypeError(f"model name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    path = str(model_path(path))
    if Path(path).suffix not in (".pth", ".onnx"):
        raise argparse.ArgumentTypeError(f"{path}: expected a .pth checkpoint or an .onnx export")
    return name, path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = ServeConfig()
    p = Parser(description="Serve captcha models over HTTP.")
    p.add_argument("--model", type=model_arg, action="append", metavar="NAME=PATH",
                   help="a model to serve, .pth, .onnx or base, the shipped base model (repeatable; the first is "
                        f"the default; default: {' '.join(f'{k}={v}' for k, v in d.models.items())})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port, default=8000, help="port to listen on")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="server processes, each with all models and cores / N forward passes at once")
    p.add_argument("--max-batch", type=positive_int, default=d.max_batch, metavar="N",
                   help="images in a model's forward passes at once, shared equally by its --passes")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=d.max_wait_ms, metavar="MS",
                   help="how long a forward pass waits at most for more requests to join it: it waits only until "
                        "it holds as many requests as the last finished pass answered (a lone client's request runs "
                        "at once)")
    p.add_argument("--max-bytes", type=positive_int, default=d.max_bytes, metavar="N", help="request body limit")
    p.add_argument("--max-pixels", type=positive_int, default=d.max_pixels, metavar="N",
                   help="pixels per image, checked on its header before decoding")
    p.add_argument("--max-images", type=positive_int, default=d.max_images, metavar="N", help="images per request")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require the key in environment variable VAR on every endpoint but /healthz and /readyz")
    p.add_argument("--body-timeout", type=positive_float, default=d.body_timeout, metavar="S",
                   help="seconds a request body may stop arriving before the request is answered 408; idle "
                        "keep-alive connections close after 5 s")
    p.add_argument("--shutdown-timeout", type=positive_float, default=d.shutdown_timeout, metavar="S",
                   help="seconds a stopping server (Ctrl-C, SIGTERM) waits for requests in flight")
    p.add_argument("--reload-interval", type=positive_float, default=d.reload_interval, metavar="S",
                   help="seconds between checks of the model files for a new version")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--passes", type=positive_int, metavar="N",
                   help="forward passes at once per model, each on one core (default: cores / workers; 1 on a GPU)")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    return p.parse_args(argv)


def config(args: argparse.Namespace) -> ServeConfig:
    """The service's settings from its flags; a model name given twice is an error, not a silent replacement."""
    names = [name for name, _ in args.model or []]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError("model", f"the name {twice[0]!r} is given to more than one model; give each its own name")
    models = dict(args.model) if args.model else ServeConfig().models
    return ServeConfig(models=models, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                       max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_images=args.max_images,
                       api_key_env=args.api_key_env, reload_interval=args.reload_interval, device=args.device,
                       body_timeout=args.body_timeout, shutdown_timeout=args.shutdown_timeout,
                       passes=args.passes, workers=args.workers)


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: serve(parse_args(argv)))


def serve(args: argparse.Namespace) -> int:
    """Check the port, the key and every model in one line each, then serve until stopped."""
    import uvicorn

    from captcha_recognize.reading.recognizer import CaptchaRecognizer
    from captcha_recognize.serve.app import create_app, log_to_console

    cfg = config(args)
    pick_device(cfg.device)  # a GPU that is not there is one line, not a traceback in each worker
    check_port(args.host, args.port)
    cfg.api_key()
    for name, path in cfg.models.items():  # fail here, in one line, rather than in each worker
        CaptchaRecognizer(path)
    log_to_console()
    options = dict(host=args.host, port=args.port, access_log=not args.no_access_log, log_level="info",
                   timeout_keep_alive=5, timeout_graceful_shutdown=cfg.shutdown_timeout)
    if args.workers > 1:  # each worker process builds its app from the configuration in the environment
        os.environ[CONFIG_ENV] = config_to_env(cfg)
        with tempfile.TemporaryDirectory(prefix="captcha-metrics-") as shared:  # /metrics sums the workers
            os.environ.setdefault(MULTIPROC_ENV, shared)
            uvicorn.run("captcha_recognize.serve.app:app_from_env", factory=True, workers=args.workers, **options,
                        timeout_worker_healthcheck=WORKER_START_S)
    else:
        uvicorn.run(create_app(cfg), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
