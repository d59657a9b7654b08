"""The training curve as a picture: loss and validation accuracy per epoch."""
from __future__ import annotations

import sys
from typing import Any

from captcha_recognize.files import atomic_write


def save_plot(history: list[dict[str, Any]], path: str) -> None:
    """Training loss and validation accuracy (overall and per position) per epoch, as PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no plot written", file=sys.stderr)
        return
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(epochs, [h["loss"] for h in history], label="train loss")
    a1.set_xlabel("epoch"), a1.set_ylabel("loss"), a1.set_yscale("log"), a1.legend()
    if "sequence_accuracy" in history[-1]:
        a2.plot(epochs, [h["sequence_accuracy"] for h in history], label="sequence", lw=2)
        a2.plot(epochs, [h["character_accuracy"] for h in history], label="character")
        for i in range(len(history[-1]["position_accuracy"])):
            a2.plot(epochs, [h["position_accuracy"][i] for h in history], label=f"position {i + 1}",
                    lw=0.8, alpha=0.7)
        a2.set_xlabel("epoch"), a2.set_ylabel("validation accuracy"), a2.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)
