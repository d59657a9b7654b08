"""Captcha recognition models: the classic multi-head CNN and a CRNN trained with CTC.

Both are rebuilt from a ``ModelConfig`` stored in the checkpoint::

    model = build_model(ModelConfig(**ckpt["model_args"]))

Shapes: images are ``(B, C, H, W)`` floats; the CNN returns logits ``(B, P, K)`` (one
row of K class scores per character position), the CRNN returns logits ``(B, T, K + 1)``
(one row per image column group, index 0 is the CTC blank).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


CLASSIC_CNN_CHANNELS = (32, 64, 128, 256)  # the original network; checkpoints saved without cnn_channels
CLASSIC_CRNN_CHANNELS = (32, 64, 96, 96, 128, 128)  # checkpoints saved without crnn_channels


@dataclass
class ModelConfig:
    arch: str = "cnn"  # "cnn" or "crnn"
    n_classes: int = 10  # alphabet size (the CRNN adds one blank class itself)
    n_positions: int = 4  # label length: number of CNN heads (unused by the CRNN)
    in_channels: int = 3
    img_h: int = 22
    img_w: int = 50
    batch_norm: bool = True
    # CNN: widths of the 4 conv stages (each two 3x3 convs, then a 2x2 max-pool)
    cnn_channels: tuple[int, ...] = (16, 32, 64, 256)
    head_hidden: int = 100  # CNN: hidden units of each position head
    dropout: float = 0.1  # CNN: dropout before each head's last layer
    # CRNN: widths of its 6 conv layers
    crnn_channels: tuple[int, ...] = (16, 32, 64, 64, 128, 128)
    # CRNN: GRU hidden size per direction
    rnn_hidden: int = 96


def conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    """3x3 conv (padding 1) + optional BatchNorm + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class CNNModel(nn.Module):
    """8 conv layers in 4 pooled stages, then one Linear-ReLU-Linear head per position.

    For a 50x22 input the flattened feature map is 256 x 1 x 3 = 768, as in the classic
    "four-digit-head" design.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        if len(cfg.cnn_channels) != 4:
            raise ValueError(f"cnn_channels needs 4 stage widths, got {cfg.cnn_channels!r}")
        for c in cfg.cnn_channels:
            layers += conv_block(c_in, c, cfg.batch_norm) + conv_block(c, c, cfg.batch_norm)
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        h, w = cfg.img_h, cfg.img_w
        for _ in cfg.cnn_channels:
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"image {cfg.img_w}x{cfg.img_h} is too small for 4 pooling stages (min 16x16)")
        self.flat_features = c_in * h * w
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Linear(self.flat_features, cfg.head_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.head_hidden, cfg.n_classes),
            )
            for _ in range(cfg.n_positions)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).flatten(1)  # (B, 768) for 50x22
        return torch.stack([head(f) for head in self.heads], dim=1)  # (B, P, K)


class CRNN(nn.Module):
    """Conv features -> per-column projection -> residual BiGRU -> alphabet + blank.

    Two initialisations let CTC training leave its blank-only plateau within a few epochs
    on a few hundred images (without them it can stay there for the whole run):
    the classifier starts out favouring the blank (bias ``blank_bias``), and the BiGRU is
    added to the conv features through a zero-initialised layer, so it starts as a no-op
    and the per-column conv features learn to localise characters first.
    """

    blank_bias = 3.0

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        bn = cfg.batch_norm
        if len(cfg.crnn_channels) != 6:
            raise ValueError(f"crnn_channels needs 6 conv widths, got {cfg.crnn_channels!r}")
        c1, c2, c3, c4, c5, c6 = cfg.crnn_channels
        self.features = nn.Sequential(
            *conv_block(cfg.in_channels, c1, bn), nn.MaxPool2d(2),  # H/2, W/2
            *conv_block(c1, c2, bn), nn.MaxPool2d(2),  # H/4, W/4
            *conv_block(c2, c3, bn), *conv_block(c3, c4, bn), nn.MaxPool2d((2, 1)),  # H/8
            *conv_block(c4, c5, bn), *conv_block(c5, c6, bn), nn.MaxPool2d((2, 1)),  # H/16
        )
        h = cfg.img_h // 16
        if h < 1 or cfg.img_w // 4 < 2:
            raise ValueError(f"image {cfg.img_w}x{cfg.img_h} is too small for the CRNN (min 8x16)")
        width = 2 * cfg.rnn_hidden
        self.proj = nn.Linear(c6 * h, width)
        self.rnn = nn.GRU(width, cfg.rnn_hidden, bidirectional=True, batch_first=True)
        self.rnn_out = nn.Linear(width, width)
        nn.init.zeros_(self.rnn_out.weight)
        nn.init.zeros_(self.rnn_out.bias)
        self.classifier = nn.Linear(width, cfg.n_classes + 1)
        with torch.no_grad():
            self.classifier.bias[0] = self.blank_bias  # index 0 is the CTC blank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, C, H', T)
        f = f.permute(0, 3, 1, 2).flatten(2)  # (B, T, C * H')
        f = torch.relu(self.proj(f))  # (B, T, 2 * hidden)
        r, _ = self.rnn(f)  # (B, T, 2 * hidden)
        f = f + self.rnn_out(r)  # (B, T, 2 * hidden)
        return self.classifier(f)  # (B, T, K + 1)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model named by ``cfg.arch``."""
    if cfg.arch == "cnn":
        return CNNModel(cfg)
    if cfg.arch == "crnn":
        return CRNN(cfg)
    raise ValueError(f"unknown arch {cfg.arch!r} (expected 'cnn' or 'crnn')")
