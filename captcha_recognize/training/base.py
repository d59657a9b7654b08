"""Starting a CRNN from the shipped base model (``reading.spec.BASE_CHECKPOINT``), a CRNN trained on
captchas of many looks (``data.looks``): its backbone always, the classifier rows of the characters it
knows, new characters from a look-alike it knows (Cyrillic ``а`` from Latin ``a``) or fresh."""
from __future__ import annotations

from typing import Any

import torch

from captcha_recognize.data.codec import look_alike
from captcha_recognize.errors import CheckpointError
from captcha_recognize.model import ModelConfig, build_model
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.reading.spec import BASE_CHECKPOINT
from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training.events import Events

ARCH_KEYS = ("arch", "crnn_channels", "rnn_hidden", "batch_norm")  # what must match for the weights to fit
GREY_SHARES = (0.299, 0.587, 0.114)  # of R, G and B in grey (ITU-R 601-2, as Pillow converts)


def base_available(cfg: TrainConfig) -> bool:
    """Whether a CRNN run of ``cfg`` may start from the shipped base model."""
    return not cfg.from_scratch and not cfg.init_from and BASE_CHECKPOINT.is_file()


def base_start(cfg: TrainConfig, model_args: dict[str, Any], alphabet: str, image_channels: int,
               events: Events) -> dict[str, torch.Tensor] | None:
    """The weights a new run starts from: the base model's, fitted to ``model_args`` and ``alphabet``;
    None to start from random weights (``--from-scratch``, ``--init-from``, the CNN, no base model).
    Says which in one line."""
    if cfg.from_scratch or cfg.init_from:
        return None
    if model_args["arch"] != "crnn":
        events.note("starting from random weights: the base model is a CRNN")
        return None
    if not BASE_CHECKPOINT.exists():
        events.note(f"starting from random weights: no base model at {BASE_CHECKPOINT} (python -m "
                    "captcha_recognize.cli.base_model makes it)")
        return None
    try:
        base = load_checkpoint(BASE_CHECKPOINT)
    except CheckpointError as e:
        events.note(f"starting from random weights: {e}")
        return None
    if any(as_list(base["model_args"].get(k)) != as_list(model_args.get(k)) for k in ARCH_KEYS):
        events.note("starting from random weights: the base model's layers differ from this run's")
        return None
    weights, known, alike = fit_weights(base, model_args, alphabet, image_channels)
    new = len(alphabet) - known - alike
    events.note(f"starting from the base model: its backbone, {known} of the {len(alphabet)} characters known"
                + (f", {alike} from look-alikes" if alike else "") + (f", {new} new" if new else "")
                + " (--from-scratch: random weights)")
    return weights


def as_list(value: Any) -> Any:
    """A tuple or list of widths as a list (a checkpoint may hold either), anything else as it is."""
    return list(value) if isinstance(value, (list, tuple)) else value


def fit_weights(base: dict[str, Any], model_args: dict[str, Any], alphabet: str,
                image_channels: int = 1) -> tuple[dict[str, torch.Tensor], int, int]:
    """(a state dict for ``model_args``, characters known, characters from a look-alike): every base
    tensor of the same shape; the first conv's grey kernel on the image's ``image_channels`` (RGB: in
    the shares grey takes of each; ink masks start at zero); the projection of a feature map of another
    height from the base's rows each row covers; the classifier's blank and the rows of the characters
    the base knows. The rest keeps a fresh initialisation."""
    target = build_model(ModelConfig(**model_args)).state_dict()
    src = base["model"]
    for name, t in target.items():
        s = src.get(name)
        if s is not None and s.shape == t.shape and not name.startswith("classifier"):
            target[name] = s.clone()
    first = "features.0.weight"  # (C1, in, 3, 3)
    if src[first].shape[1] != target[first].shape[1]:
        shares = GREY_SHARES if image_channels == 3 else (1.0,)
        target[first] = torch.zeros_like(target[first])
        for c, share in enumerate(shares):
            target[first][:, c] = src[first][:, 0] * share
    if src["proj.weight"].shape != target["proj.weight"].shape:
        target["proj.weight"] = tile_rows(src["proj.weight"], model_args["crnn_channels"][-1],
                                          target["proj.weight"].shape[1])
    index = {c: i + 1 for i, c in enumerate(base["alphabet"])}  # row 0 is the blank
    rows = [(0, 0)]
    known = alike = 0
    for i, c in enumerate(alphabet, 1):
        twin = look_alike(c, base["alphabet"])
        if c in index or twin:
            rows.append((i, index[c] if c in index else index[twin]))
            known, alike = (known + 1, alike) if c in index else (known, alike + 1)
    for name in ("classifier.weight", "classifier.bias"):
        for i, j in rows:
            target[name][i] = src[name][j]
    return target, known, alike


def tile_rows(weight: torch.Tensor, channels: int, columns: int) -> torch.Tensor:
    """A projection over ``channels * H`` features (channel-major, ``columns`` in all) from one over
    ``channels * h``: row r of H takes each base row's weights times the part of that row it covers
    (rows as equal parts of the height), so a map whose rows repeat the base's projects as the base's
    does."""
    out_features, base_columns = weight.shape  # (D, C * h)
    h, rows = base_columns // channels, columns // channels
    edges = torch.linspace(0, 1, rows + 1), torch.linspace(0, 1, h + 1)
    overlap = (torch.minimum(edges[0][1:, None], edges[1][None, 1:])
               - torch.maximum(edges[0][:-1, None], edges[1][None, :-1])).clamp(min=0)  # (H, h)
    share = overlap * h  # (H, h): the part of each base row (1/h high) that each row covers
    w = weight.view(out_features, channels, h)  # (D, C, h)
    return torch.einsum("dch,rh->dcr", w, share).reshape(out_features, columns)  # (D, C * H)
