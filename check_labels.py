"""Find likely mislabelled images: every image is read by a model that never trained on it.

Usage:
    python check_labels.py train_images                         # 5 folds, CNN, default recipe
    python check_labels.py ../shared/data/captcha-images-v2 --arch crnn
    python check_labels.py my_set --folds 3 --sheet suspects.png --train-args="--epochs 20"

The labelled images are split into ``--folds`` parts. For each part, a model trained with the
default recipe on the other parts reads the held-out part. The images read differently from
their file names are listed, the most confident reading first: a confident reading that
disagrees with the name is often a typo in the name (look at it in ``--sheet``), a doubtful one
a hard image. It takes ``--folds`` times as long as one training.
"""
import sys

from captcha_recognize.cli.launch import check_labels

if __name__ == "__main__":
    sys.exit(check_labels())
