"""The label codec: the one owner of the alphabet, the CTC blank, encoding labels and decoding
model outputs into texts and confidences."""
from __future__ import annotations

from typing import Sequence

import torch

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

    def accepts(self, label: str) -> bool:
        """Whether ``label`` can be encoded (alphabet, and length when it is fixed)."""
        ok = all(c in self.index for c in label) and len(label) > 0
        return ok and self.fixed_length in (None, len(label))

    def encode(self, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN: ``(B, P)`` targets. CTC: concatenated targets ``(sum L,)``. Plus lengths ``(B,)``."""
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long)
        if self.ctc:
            flat = [self.index[c] for s in labels for c in s]
            return torch.tensor(flat, dtype=torch.long), lengths
        return torch.tensor([[self.index[c] for c in s] for s in labels], dtype=torch.long), lengths

    def collapse(self, path: torch.Tensor) -> list[list[int]]:
        """CTC: each row of class indices ``(B, T)`` with repeats merged and blanks dropped."""
        out = []
        for row in path.tolist():
            kept, prev = [], self.blank
            for k in row:
                if k != prev and k != self.blank:
                    kept.append(k)
                prev = k
            out.append(kept)
        return out

    def best_path(self, logits: torch.Tensor) -> torch.Tensor:
        """The class read at each position or time step ``(B, T|P)``: the most probable one
        (greedy), except that a fixed-length CRNN whose greedy reading has another length takes
        the most probable alignment of exactly ``length`` characters instead."""
        return self._read(logits)[0]

    def _read(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[list[int]] | None]:
        """``best_path`` and, for CTC, its rows collapsed (``collapse``), each row collapsed once."""
        path = logits.argmax(-1)  # (B, T|P)
        if not self.ctc:
            return path, None
        kept = self.collapse(path)
        wrong = [i for i, k in enumerate(kept) if len(k) != self.length] if self.fixed else []
        if wrong:
            rows = torch.tensor(wrong)
            path[rows] = ctc_path_of_length(logits[rows].float().log_softmax(-1), self.length, path[rows])
            for i, k in zip(wrong, self.collapse(path[rows])):
                kept[i] = k
        return path, kept

    def log_confidence(self, logits: torch.Tensor, temperature: float = 1.0,
                       path: torch.Tensor | None = None) -> torch.Tensor:
        """Log of the confidence ``(B,)``: the sum over positions (CTC: time steps, blanks
        included) of the log-probability of the class on ``path`` (default ``best_path``), with
        logits divided by ``temperature`` (the checkpoint's calibration; 1 = raw softmax).
        Float64 logits are computed in float64 (calibration), others in float32."""
        x = logits if logits.dtype == torch.float64 else logits.float()
        log_p = (x / temperature).log_softmax(-1)  # (B, T|P, K)
        path = self.best_path(logits) if path is None else path  # (B, T|P)
        return log_p.gather(-1, path.unsqueeze(-1)).squeeze(-1).sum(-1)  # (B,)

    def decode(self, logits: torch.Tensor, temperature: float = 1.0) -> tuple[list[str], list[float]]:
        """Texts and confidences from logits: CNN ``(B, P, K)``, CRNN ``(B, T, K + 1)``.

        Confidence is the product of the chosen classes' probabilities at ``temperature``
        (``log_confidence``); the temperature changes the confidence, never the text. CTC
        decoding follows ``best_path``: collapse repeats, then drop blanks.
        """
        path, kept = self._read(logits)  # (B, T|P), CTC: the characters read per row
        conf = self.log_confidence(logits, temperature, path).exp().tolist()
        chars = self.alphabet
        if kept is not None:
            return ["".join(chars[k - 1] for k in row) for row in kept], conf
        return ["".join(chars[k] for k in row) for row in path.tolist()], conf


def ctc_path_of_length(log_p: torch.Tensor, length: int, fallback: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """The most probable CTC alignment ``(B, T)`` of log-probabilities ``(B, T, K)`` that reads
    exactly ``length`` characters (Viterbi over states: characters read so far, class of this
    step); a row too short for ``length`` characters keeps its ``fallback`` row."""
    B, T, K = log_p.shape
    classes = torch.arange(K)
    score = log_p.new_full((B, length + 1, K), float("-inf"))  # (B, N + 1, K): best path ending in state
    score[:, 0, blank] = log_p[:, 0, blank]
    score[:, 1, 1:] = log_p[:, 0, 1:]
    prev_class, advanced = [], []  # per step t >= 1: where each state came from
    for t in range(1, T):
        top, arg = score.topk(2, -1)  # (B, N + 1, 2)
        is_top = classes == arg[..., :1]  # (B, N + 1, K)
        other = torch.where(is_top, top[..., 1:], top[..., :1])  # best over classes other than k
        other_arg = torch.where(is_top, arg[..., 1:], arg[..., :1])
        enter = torch.full_like(score, float("-inf"))  # a new character k, after n - 1 others
        enter[:, 1:] = other[:, :-1]
        enter_arg = torch.zeros_like(other_arg)
        enter_arg[:, 1:] = other_arg[:, :-1]
        stay = score.clone()  # the same character k held on
        stay[..., blank] = top[..., 0]  # a blank follows anything, reading nothing new
        stay_arg = classes.expand(B, length + 1, K).clone()
        stay_arg[..., blank] = arg[..., 0]
        go = enter > stay  # (B, N + 1, K)
        go[..., blank] = False
        score = torch.where(go, enter, stay) + log_p[:, t].unsqueeze(1)
        prev_class.append(torch.where(go, enter_arg, stay_arg))
        advanced.append(go)
    end_score, k = score[:, length].max(-1)  # (B,)
    n = torch.full((B,), length)
    rows = torch.arange(B)
    path = torch.empty(B, T, dtype=torch.long)
    for t in range(T - 1, 0, -1):
        path[:, t] = k
        k, n = prev_class[t - 1][rows, n, k], n - advanced[t - 1][rows, n, k].long()
    path[:, 0] = k
    return torch.where(torch.isfinite(end_score).unsqueeze(1), path, fallback)
