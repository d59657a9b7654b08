"""Export a checkpoint to ONNX and verify that it reads exactly what PyTorch reads.

Usage:
    python torch_model_export.py                                  # captcha_recognize.pth -> .onnx
    python torch_model_export.py my.pth --out my.onnx --verify ../my_captchas
    python torch_model_export.py --int8                           # -> captcha_recognize.int8.onnx

The ONNX model takes normalized images ``images: (batch, C, H, W)`` and returns ``logits``; the
alphabet, label length, architecture and preprocessing travel in its metadata, so
``CaptchaRecognizer("model.onnx")`` needs nothing else. ``--int8`` quantizes statically (int8
weights and activations, calibrated on real images), faster on a CPU; since it is no longer
exact, it must read at least 99% of the verify images that PyTorch accepts (confidence at its
threshold) like PyTorch. The file is written only once it has passed. Needs ``onnx`` to export
and ``onnxruntime`` to verify or quantize.
"""
import sys

from captcha_recognize.cli.launch import export

if __name__ == "__main__":
    sys.exit(export())
