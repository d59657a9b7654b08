"""Read captchas with a trained checkpoint.

Usage:
    python torch_model_predict.py new_images                 # folder(s) and/or files
    python torch_model_predict.py new_images --json report.json
    python torch_model_predict.py a.png b.png --checkpoint my.pth --device cuda
    python torch_model_predict.py new_images --errors errors.png --csv readings.csv
    python torch_model_predict.py new_images --min-confidence 0.9

Prints one line per image (file, prediction, calibrated confidence, accept: whether the
confidence clears the checkpoint's accept threshold or --min-confidence). When the file
names are labels (``3568.png``), it also prints per-position accuracy, sequence accuracy and
how many characters were wrong. Exit status: 0 ok, 1 nothing could be read, 2 a bad flag or checkpoint.
From Python: ``from captcha_recognize import CaptchaRecognizer``.
"""
import sys

from captcha_recognize.cli.launch import predict

if __name__ == "__main__":
    sys.exit(predict())
