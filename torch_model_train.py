"""Train a captcha model on a folder of images whose file names are their labels.

Usage:
    python torch_model_train.py                                  # train_images/ -> captcha_recognize.pth
    python torch_model_train.py --data ../my_captchas --arch crnn
    python torch_model_train.py --resume                         # continue an interrupted run
    python torch_model_train.py --synthetic 20000 --alphabet 0123456789 --length 4
    torchrun --nproc_per_node=4 torch_model_train.py --data big_folder/   # DDP

Writes the best checkpoint (by validation sequence accuracy) to ``--out`` and, while training,
the latest state to ``<out>_last.pth`` for ``--resume``; both atomically. The flags are the fields
of ``TrainConfig``; from Python: ``from captcha_recognize.training import TrainConfig, train``.
"""
import sys

from captcha_recognize.cli.launch import train

if __name__ == "__main__":
    sys.exit(train())
