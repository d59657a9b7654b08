"""What a run learns: the labelled images it reads, the architecture ``--arch auto`` picks, the
alphabet, label length and input size (``make_task``), and the training set and validation split
(``build_datasets``). A run from a checkpoint's weights keeps the checkpoint's own task and says
which given settings it does not follow (``kept_from_checkpoint``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch.utils.data import ConcatDataset

from captcha_recognize.data.arrays import ArrayDataset, to_arrays
from captcha_recognize.data.augment import column_spread, evenly_spaced, text_span
from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.folders import LabelledImages, read_labelled, split_indices
from captcha_recognize.data.labels import LabelRules, infer_alphabet, mixed_case, read_label_map
from captcha_recognize.data.preprocess import CHANNELS, Preprocess, auto_size, find_ink, max_height
from captcha_recognize.data.synthetic import SyntheticCaptchas
from captcha_recognize.errors import ConfigError, DataError
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.text import plural
from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training.events import Events
from captcha_recognize.training.base import base_available
from captcha_recognize.training.recipe import CNN_PER_CHARACTER, FEW_IMAGES


@dataclass
class Split:
    """Validation images as one uint8 tensor ``(N, C, H, W)``, their labels and names."""
    arrays: torch.Tensor | None = None
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def label_rules(cfg: TrainConfig, init: dict[str, Any] | None) -> LabelRules:
    """How file names become labels: a checkpoint's own when starting from one, else the config's."""
    if init is not None:
        return ModelSpec.from_checkpoint(init).rules
    return LabelRules(cfg.case or "keep", read_label_map(cfg.label_map) if cfg.label_map else ())


def make_task(cfg: TrainConfig, data: LabelledImages | None,
              init: dict[str, Any] | None) -> tuple[LabelConverter, Preprocess]:
    """Alphabet, label length and input size: from a checkpoint when resuming/fine-tuning,
    else from the config, else inferred from the data."""
    if init is not None:
        spec = ModelSpec.from_checkpoint(init)
        return spec.converter, spec.preprocess
    labels = data.labels if data is not None else []
    alphabet = cfg.alphabet or infer_alphabet(labels)
    lengths = sorted({len(s) for s in labels}) or [cfg.length]
    length = cfg.length or lengths[-1]
    if cfg.arch == "cnn" and (cfg.length is None and len(lengths) > 1):
        raise DataError(f"labels have different lengths {lengths}: the CNN needs one length "
                        f"(give --length, or use --arch crnn)")
    if cfg.img_size:
        w, h = cfg.img_size
    elif data is not None:
        sizes = [im.size for im in data.images]
        w, h = auto_size(sizes, max_height(cfg.arch, sizes))
    else:
        w, h = 50, 22
    channels = cfg.channels or CHANNELS[cfg.arch]
    # ink channels for the CRNN only: the one flat colour percent4-digits' images share is their grey frame
    ink = find_ink(data.images) if data is not None and cfg.arch == "crnn" and cfg.ink == "auto" else ()
    ctc = cfg.arch == "crnn"  # a CRNN whose labels all have one length reads that length only
    fixed = ctc and len(lengths) == 1 and length is not None
    if ctc and length and w // 4 < 2 * length:  # the CRNN reads a column per 4 pixels; a doubled letter needs 3
        raise ConfigError("img_size", f"{w}x{h} gives the CRNN {w // 4} columns to read, too few for {length} "
                                      f"characters: give at least {8 * length} pixels of width")
    return LabelConverter(alphabet, length, ctc=ctc, fixed=fixed), Preprocess(w, h, channels, ink)


def kept_from_checkpoint(cfg: TrainConfig, spec: ModelSpec) -> list[str]:
    """One note per setting this call gives that a run from ``spec``'s weights cannot follow: those
    weights were made for the checkpoint's alphabet, length, input and label rules, which it keeps."""
    pre = spec.preprocess
    size = lambda wh: "x".join(map(str, wh))  # noqa: E731
    pairs = lambda m: ", ".join(" ".join(p) for p in m) or "none"  # noqa: E731
    given = [  # (this call's value or None when not given, the checkpoint's, the flag, the checkpoint's as text)
        (None if cfg.arch == "auto" else cfg.arch, spec.arch, f"--arch {cfg.arch}", f"architecture {spec.arch!r}"),
        (cfg.alphabet, spec.alphabet, f"--alphabet {cfg.alphabet}", f"alphabet {spec.alphabet!r}"),
        (cfg.length, spec.label_length, f"--length {cfg.length}",
         f"label length {spec.label_length}" if spec.label_length else "labels of any length"),
        (tuple(cfg.img_size) if cfg.img_size else None, (pre.width, pre.height),
         f"--img-size {size(cfg.img_size or ())}", f"input size {size((pre.width, pre.height))}"),
        (cfg.channels, pre.channels, f"--channels {cfg.channels}",
         "grey input" if pre.channels == 1 else "colour input"),
        (() if cfg.ink == "off" else None, pre.ink, "--ink off", ink_text(pre).removeprefix(" + ")),
        (cfg.case, spec.rules.case, f"--case {cfg.case}", f"case rule {spec.rules.case!r}"),
        (read_label_map(cfg.label_map) if cfg.label_map else None, spec.rules.label_map,
         f"--label-map {cfg.label_map}", f"label map ({pairs(spec.rules.label_map)})"),
    ]
    return [f"note: using the checkpoint's {theirs_text}, not {flag}: its weights were made for it"
            for mine, theirs, flag, theirs_text in given if mine is not None and mine != theirs]


def without_kept(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` less the settings a run from its ``--init-from`` checkpoint takes from the checkpoint
    instead: for runs after one whose notes (``kept_from_checkpoint``) have named them. ``--alphabet``
    stays, as it also chooses which labelled files are read."""
    if not cfg.init_from:
        return cfg
    return replace(cfg, arch=load_checkpoint(cfg.init_from)["model_args"]["arch"], length=None, img_size=None,
                   channels=None, ink="auto", case=None, label_map=None)


def choose_arch(data: LabelledImages | None, cfg: TrainConfig, pseudo: int = 0) -> tuple[str, str]:
    """``--arch auto``: the CNN when every label has one length and the characters sit at fixed,
    evenly spaced places (its position heads then each see one character), else the CRNN, which
    reads any length and layout. Under ``CNN_PER_CHARACTER`` labels per character of the alphabet
    (``pseudo``-labelled images count) the CRNN from the base model, when there is one: the CNN's
    heads learn each character anew at each position. Returns the choice and the reason, for the log."""
    if cfg.length:
        return "cnn", f"--length {cfg.length} was given"
    if data is None:
        return "cnn", "generated captchas of one length"
    lengths = sorted({len(s) for s in data.labels})
    if len(lengths) > 1:
        return "crnn", f"the labels have {len(lengths)} lengths"
    sizes = [im.size for im in data.images]
    w, h = cfg.img_size or auto_size(sizes, max_height("cnn", sizes))
    spread = column_spread(to_arrays(data.images[:2000], Preprocess(w, h, CHANNELS["cnn"])))  # (W,)
    if not evenly_spaced(spread, text_span(spread), lengths[0]):
        return "crnn", "the characters are not at fixed, evenly spaced places"
    where = f"the {lengths[0]} characters sit at fixed, evenly spaced places"
    alphabet = cfg.alphabet or infer_alphabet(data.labels)
    need, have = CNN_PER_CHARACTER * len(alphabet), len(data.labels) + pseudo
    if have < need and base_available(cfg):
        return "crnn", (f"{where}, but from {plural(have, 'label')}, under {need} ({CNN_PER_CHARACTER} per "
                        "character), the CRNN from the base model reads better")
    return "cnn", where


def warn_mixed_case(cfg: TrainConfig, labels: Sequence[str], events: Events) -> None:
    """Say once when the labels hold both cases of a letter and no --case was chosen."""
    both = mixed_case(labels)
    if both and cfg.case is None:
        letters = ", ".join(both[:8]) + (" ..." if len(both) > 8 else "")
        events.note(f"warning: the labels hold both cases of {letters}: if "
                    "the site ignores case, give --case lower (or upper) so each letter is learnt once; "
                    "--case keep keeps them apart and silences this")


def read_data(cfg: TrainConfig, init: dict[str, Any] | None, events: Events) -> LabelledImages | None:
    """The labelled images of ``cfg.data`` (None for synthetic-only runs)."""
    if not cfg.data:
        return None
    data = read_labelled(cfg.data, cfg.alphabet, label_rules(cfg, init), cfg.recursive)
    if init is None:
        warn_mixed_case(cfg, data.labels, events)
    return data


def build_datasets(cfg: TrainConfig, data: LabelledImages | None, converter: LabelConverter, preprocess: Preprocess,
                   events: Events, pseudo: LabelledImages | None = None) -> tuple[torch.utils.data.Dataset, Split]:
    """The training set and the validation split; validation comes from the real folder when there
    is one. ``pseudo``-labelled images join the training set only."""
    parts: list[torch.utils.data.Dataset] = []
    val = Split()
    if data is not None:
        keep = [i for i, s in enumerate(data.labels) if converter.accepts(s)]
        if len(keep) < len(data.labels):
            events.note(f"warning: skipped {plural(len(data.labels) - len(keep), 'image')} whose label does not "
                        f"fit alphabet {converter.alphabet!r}"
                        + (f" and length {converter.fixed_length}" if converter.fixed_length else ""))
        if not keep:
            raise DataError("no image has a label that fits the alphabet and length")
        arrays = to_arrays([data.images[i] for i in keep], preprocess)  # (N, C, H, W) uint8
        labels = [data.labels[i] for i in keep]
        names = [data.paths[i].name for i in keep]
        tr, va = validation_indices(len(labels), cfg.val_split, cfg.val_seed)
        train_arrays, train_labels = arrays[tr], [labels[i] for i in tr]
        fit = [i for i, s in enumerate(pseudo.labels) if converter.accepts(s)] if pseudo is not None else []
        if fit:
            train_arrays = torch.cat([train_arrays, to_arrays([pseudo.images[i] for i in fit], preprocess)])
            train_labels += [pseudo.labels[i] for i in fit]
        parts.append(ArrayDataset(train_arrays, train_labels))
        if len(tr) < FEW_IMAGES and not cfg.synthetic and pseudo is None:
            events.note(f"warning: only {len(tr)} training images; real captchas need {FEW_IMAGES} or more "
                        "labelled images to read well")
        if va:
            val = Split(arrays[va], [labels[i] for i in va], [names[i] for i in va])
    if cfg.synthetic:
        parts.append(SyntheticCaptchas(cfg.synthetic, converter.alphabet, converter.length, preprocess, seed=cfg.seed))
        if val.arrays is None:
            val = materialize(SyntheticCaptchas(max(200, cfg.synthetic // 20), converter.alphabet, converter.length,
                                                preprocess, seed=cfg.seed + 7919))
    if not parts or not len(parts[0]):
        raise DataError("nothing to train on")
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), val


def validation_indices(n: int, val_split: float, val_seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices of ``n`` labelled images that fit the alphabet: the split every run
    with these settings makes."""
    return split_indices(n, [val_split], val_seed) if val_split > 0 else (list(range(n)), [])


def materialize(ds: torch.utils.data.Dataset) -> Split:
    """All images and labels of a (small) dataset as one ``Split``."""
    items = [ds[i] for i in range(len(ds))]
    return Split(torch.stack([a for a, _ in items]), [s for _, s in items],
                 [f"synthetic #{i}" for i in range(len(items))])


def fingerprint(data: LabelledImages | None) -> str:
    """SHA-256 over the labelled images' names, labels and sizes, in their order: a resumed run must find
    the same ones, or its validation split would change under it."""
    h = hashlib.sha256()
    for path, label in zip(data.paths, data.labels) if data is not None else ():
        h.update(f"{path.name}\0{label}\0{path.stat().st_size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def ink_text(pre: Preprocess) -> str:
    """`` + 2 ink masks (140,140,140 112,112,112)`` for the summary line; empty without ink."""
    if not pre.ink:
        return ""
    return f" + {plural(len(pre.ink), 'ink mask')} ({' '.join(','.join(map(str, c)) for c in pre.ink)})"
