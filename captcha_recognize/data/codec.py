"""The label codec: the one owner of the alphabet, the CTC blank, encoding labels and decoding
model outputs into texts and confidences. NumPy only, so that a reader without PyTorch decodes
exactly as training validates; logits may be NumPy arrays or CPU tensors."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


LOOK_ALIKES = dict(zip("аеорсухАВЕКМНОРСТХ", "aeopcyxABEKMHOPCTX"))  # Cyrillic letters drawn as Latin ones


def look_alike(char: str, known: str) -> str | None:
    """The character of ``known`` that ``char`` is drawn like (Cyrillic ``е``: Latin ``e``), when ``char``
    itself is not known."""
    twin = LOOK_ALIKES.get(char)
    return twin if char not in known and twin is not None and twin in known else None


class LabelConverter:
    """Owns the alphabet: text <-> class indices, and decoding of model outputs.

    ``ctc=False`` (CNN): class ``i`` is ``alphabet[i]``, each label has ``length`` chars.
    ``ctc=True`` (CRNN): index 0 is the blank, class ``i + 1`` is ``alphabet[i]``; with
    ``fixed=True`` every reading has exactly ``length`` chars (all training labels had that length).
    """

    def __init__(self, alphabet: str, length: int | None = None, ctc: bool = False, fixed: bool = False):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be non-empty with unique characters: {alphabet!r}")
        if fixed and not (ctc and length):
            raise ValueError("fixed=True needs a CTC converter with a length")
        self.alphabet, self.length, self.ctc, self.fixed = alphabet, length, ctc, fixed
        self.blank = 0 if ctc else None
        offset = 1 if ctc else 0
        self.index = {c: i + offset for i, c in enumerate(alphabet)}

    @property
    def n_classes(self) -> int:
        """Model output classes, blank included for CTC."""
        return len(self.alphabet) + (1 if self.ctc else 0)

    @property
    def fixed_length(self) -> int | None:
        """The length every reading has (the CNN's, or a fixed-length CRNN's); None: any."""
        return self.length if not self.ctc or self.fixed else None

    def class_mask(self, chars: str) -> np.ndarray:
        """``(n_classes,)`` booleans: the classes of ``chars`` and the blank, for readings restricted to them."""
        unknown = sorted(set(chars) - set(self.index))
        if unknown:
            raise ValueError(f"the model does not read {''.join(unknown)!r} (it reads {self.alphabet!r})")
        mask = np.zeros(self.n_classes, bool)
        mask[[self.index[c] for c in chars] + ([self.blank] if self.ctc else [])] = True
        return mask

    def accepts(self, label: str) -> bool:
        """Whether ``label`` can be encoded (alphabet, and length when it is fixed)."""
        ok = all(c in self.index for c in label) and len(label) > 0
        return ok and self.fixed_length in (None, len(label))

    def encode(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """CNN: ``(B, P)`` targets. CTC: concatenated targets ``(sum L,)``. Plus lengths ``(B,)``; int64."""
        lengths = np.array([len(s) for s in labels], dtype=np.int64)
        if self.ctc:
            return np.array([self.index[c] for s in labels for c in s], dtype=np.int64), lengths
        return np.array([[self.index[c] for c in s] for s in labels], dtype=np.int64), lengths

    def collapse(self, path: np.ndarray) -> list[list[int]]:
        """CTC: each row of class indices ``(B, T)`` with repeats merged and blanks dropped."""
        out = []
        for row in np.asarray(path).tolist():
            kept, prev = [], self.blank
            for k in row:
                if k != prev and k != self.blank:
                    kept.append(k)
                prev = k
            out.append(kept)
        return out

    def best_path(self, logits: Any) -> np.ndarray:
        """The class read at each position or time step ``(B, T|P)``: the most probable one
        (greedy), except that a fixed-length CRNN whose greedy reading has another length takes
        the most probable alignment of exactly ``length`` characters instead."""
        return self._read(as_array(logits))[0]

    def _read(self, logits: np.ndarray) -> tuple[np.ndarray, list[list[int]] | None]:
        """``best_path`` and, for CTC, its rows collapsed (``collapse``), each row collapsed once."""
        path = logits.argmax(-1)  # (B, T|P)
        if not self.ctc:
            return path, None
        kept = self.collapse(path)
        wrong = [i for i, k in enumerate(kept) if len(k) != self.length] if self.fixed else []
        if wrong:
            rows = np.array(wrong)
            log_p = log_softmax(logits[rows].astype(np.float32))
            path[rows] = ctc_path_of_length(log_p, self.length, path[rows])
            for i, k in zip(wrong, self.collapse(path[rows])):
                kept[i] = k
        return path, kept

    def log_confidence(self, logits: Any, temperature: float = 1.0, path: np.ndarray | None = None) -> np.ndarray:
        """Log of the confidence ``(B,)``: the sum over positions (CTC: time steps, blanks
        included) of the log-probability of the class on ``path`` (default ``best_path``), with
        logits divided by ``temperature`` (the checkpoint's calibration; 1 = raw softmax).
        Float64 logits are computed in float64 (calibration), others in float32."""
        x = as_array(logits)
        x = x if x.dtype == np.float64 else x.astype(np.float32)
        log_p = log_softmax(x / x.dtype.type(temperature))  # (B, T|P, K)
        path = self.best_path(x) if path is None else np.asarray(path)  # (B, T|P)
        return np.take_along_axis(log_p, path[..., None], -1)[..., 0].sum(-1)  # (B,)

    def decode(self, logits: Any, temperature: float = 1.0) -> tuple[list[str], list[float]]:
        """Texts and confidences from logits: CNN ``(B, P, K)``, CRNN ``(B, T, K + 1)``.

        Confidence is the product of the chosen classes' probabilities at ``temperature``
        (``log_confidence``); the temperature changes the confidence, never the text. CTC
        decoding follows ``best_path``: collapse repeats, then drop blanks.
        """
        x = as_array(logits)
        path, kept = self._read(x)  # (B, T|P), CTC: the characters read per row
        conf = np.exp(self.log_confidence(x, temperature, path)).tolist()
        chars = self.alphabet
        if kept is not None:
            return ["".join(chars[k - 1] for k in row) for row in kept], conf
        return ["".join(chars[k] for k in row) for row in path.tolist()], conf


def as_array(logits: Any) -> np.ndarray:
    """Logits as a NumPy array (a CPU tensor is viewed, not copied)."""
    return logits if isinstance(logits, np.ndarray) else np.asarray(logits)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``log(softmax(x))`` over the last axis, in ``x``'s float type."""
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def ctc_path_of_length(log_p: np.ndarray, length: int, fallback: np.ndarray, blank: int = 0) -> np.ndarray:
    """The most probable CTC alignment ``(B, T)`` of log-probabilities ``(B, T, K)`` that reads
    exactly ``length`` characters (Viterbi over states: characters read so far, class of this
    step); a row too short for ``length`` characters keeps its ``fallback`` row."""
    log_p = as_array(log_p)
    B, T, K = log_p.shape
    classes = np.arange(K)
    score = np.full((B, length + 1, K), -np.inf, dtype=log_p.dtype)  # (B, N + 1, K): best path ending in state
    score[:, 0, blank] = log_p[:, 0, blank]
    score[:, 1, 1:] = log_p[:, 0, 1:]
    prev_class, advanced = [], []  # per step t >= 1: where each state came from
    for t in range(1, T):
        arg1, top1, arg2, top2 = top_two(score)  # each (B, N + 1)
        is_top = classes == arg1[..., None]  # (B, N + 1, K)
        other = np.where(is_top, top2[..., None], top1[..., None])  # best over classes other than k
        other_arg = np.where(is_top, arg2[..., None], arg1[..., None])
        enter = np.full_like(score, -np.inf)  # a new character k, after n - 1 others
        enter[:, 1:] = other[:, :-1]
        enter_arg = np.zeros_like(other_arg)
        enter_arg[:, 1:] = other_arg[:, :-1]
        stay = score.copy()  # the same character k held on
        stay[..., blank] = top1  # a blank follows anything, reading nothing new
        stay_arg = np.broadcast_to(classes, (B, length + 1, K)).copy()
        stay_arg[..., blank] = arg1
        go = enter > stay  # (B, N + 1, K)
        go[..., blank] = False
        score = np.where(go, enter, stay) + log_p[:, t][:, None, :]
        prev_class.append(np.where(go, enter_arg, stay_arg))
        advanced.append(go)
    end = score[:, length]  # (B, K)
    k = end.argmax(-1)  # (B,)
    end_score = end[np.arange(B), k]
    n = np.full(B, length)
    rows = np.arange(B)
    path = np.empty((B, T), dtype=np.int64)
    for t in range(T - 1, 0, -1):
        path[:, t] = k
        k, n = prev_class[t - 1][rows, n, k], n - advanced[t - 1][rows, n, k].astype(np.int64)
    path[:, 0] = k
    return np.where(np.isfinite(end_score)[:, None], path, np.asarray(fallback))


def top_two(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Over the last axis: the index and value of the largest entry, then of the largest of the rest."""
    arg1 = score.argmax(-1)
    top1 = np.take_along_axis(score, arg1[..., None], -1)[..., 0]
    rest = score.copy()
    np.put_along_axis(rest, arg1[..., None], -np.inf, -1)
    arg2 = rest.argmax(-1)
    top2 = np.take_along_axis(rest, arg2[..., None], -1)[..., 0]
    return arg1, top1, arg2, top2
