"""Generate synthetic captchas, named by their labels, with the ``captcha`` package.

Usage:
    python make_captchas.py                                    # train_images/ and new_images/
    python make_captchas.py --out my_set --count 500 --seed 3 --alphabet 0123456789abc --length 5

Each image is drawn at twice the size and scaled down to ``--size``; files are named
``<label>.png`` (``<label>_<k>.png`` when a label repeats). The same seed gives the same
images.
"""
import sys

from captcha_recognize.cli.launch import make_captchas

if __name__ == "__main__":
    sys.exit(make_captchas())
