"""What augment writes for text data: the policy record (texts are not augmented offline; token dropout, if
set, is applied per batch by training) and a picture of the training texts: their length per class, and one
example of each class."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lab2prod.core.files import atomic_file  # noqa: E402


def save_text_preview(texts: list[str], labels: np.ndarray, classes: list[str], path: Path, shown: int = 16) -> None:
    """Words per training text by class (box plot), beside the first text of each class (up to `shown`)."""
    words = np.asarray([len(t.split()) for t in texts])
    picked = [c for c in range(len(classes)) if (labels == c).any()][:shown]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.45 * len(picked) + 1.5)), width_ratios=[1, 1.6])
    names = [classes[c] for c in picked]
    left.boxplot([words[labels == c] for c in picked], orientation="horizontal", tick_labels=names)
    left.set_xlabel("words per text")
    left.set_title(f"training texts: {len(texts)}, median {np.median(words):.0f} words")
    left.invert_yaxis()
    right.axis("off")
    right.set_title("one training text of each class")
    for row, c in enumerate(picked):
        first = texts[int(np.flatnonzero(labels == c)[0])]
        line = textwrap.shorten(first, 110, placeholder=" ...")
        right.text(0, 1 - (row + 0.5) / len(picked), f"{classes[c]}: {line}", fontsize=8, va="center", wrap=True)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
