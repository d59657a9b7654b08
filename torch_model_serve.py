"""Serve captcha models over HTTP (FastAPI on uvicorn), with micro-batching and hot reload.

Usage:
    python torch_model_serve.py                                   # captcha_recognize.pth as "default" on 127.0.0.1:8000
    python torch_model_serve.py --model digits=captcha_recognize.pth --model v2=runs/v2.onnx
    python torch_model_serve.py --host 0.0.0.0 --port 9000 --workers 2 --api-key-env CAPTCHA_KEY

    curl -F file=@new_images/0059.png http://127.0.0.1:8000/v1/recognize
    curl -H 'Content-Type: application/json' -d '{"image": "<base64>", "model": "digits"}' \\
         http://127.0.0.1:8000/v1/recognize

Answers per image ``text``, calibrated ``confidence``, ``accept`` and ``model``, plus timing.
``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/docs``. A model
file replaced on disk is reloaded without a restart. Exit status 2: bad flags or a model that
does not load. The app itself is ``captcha_recognize.serve.app.create_app``.
"""
import sys

from captcha_recognize.cli.launch import serve

if __name__ == "__main__":
    sys.exit(serve())
