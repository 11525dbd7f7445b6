"""Cleaning and splitting a dataset: one copy of each image, classes big enough, splits that never move,
and an order-independent content hash.

An image's split is a function of its content hash and the split seed alone (a hash bucket), so adding
images never moves an existing one between train, val and test, and a model's test images stay unseen
by any later model trained on the same seed. Per class, the achieved fractions come close to the
configured ones (the law of large numbers; the report shows them).
"""

from __future__ import annotations

import hashlib
from collections import Counter

from lab2prod.core.errors import DataError
from lab2prod.core.settings import IngestConfig
from lab2prod.data.sources import Candidate, Rejected

SPLIT_RULE = "sha256(f'{seed}:{pixel sha256}')[:8] as a fraction u: test if u < test_fraction, val if u < test+val"


def drop_duplicates(candidates: list[Candidate], what: str = "pixels") -> tuple[list[Candidate], list[Rejected]]:
    """Keep one copy of pixel-identical images, or of identical texts (`what`), the first by source path, so no
    sample sits in two splits.

    Copies that disagree on the label are all set aside: nobody can say which label is right.
    """
    ordered = sorted(candidates, key=lambda c: c.source)
    labels_of: dict[str, set[str]] = {}
    for c in ordered:
        labels_of.setdefault(c.sha256, set()).add(c.class_name)
    keep, seen, rejected = [], {}, []
    for c in ordered:
        if len(labels_of[c.sha256]) > 1:
            detail = f"identical {what} appear under classes {sorted(labels_of[c.sha256])}"
            rejected.append(Rejected(c.source, c.class_name, "conflicting_labels", detail))
        elif c.sha256 in seen:
            rejected.append(Rejected(c.source, c.class_name, "duplicate", f"same {what} as {seen[c.sha256]}"))
        else:
            seen[c.sha256] = c.source
            keep.append(c)
    return keep, rejected


def check_class_sizes(
    candidates: list[Candidate], classes: list[str], minimum: int, rejected: list[Rejected] | None = None
) -> None:
    """DataError naming every class with fewer than `minimum` usable images, and why its other files were
    set aside (the quarantine report is not written when ingest stops here, so the message carries it)."""
    counts = Counter(c.class_name for c in candidates)
    small = {name: counts.get(name, 0) for name in classes if counts.get(name, 0) < minimum}
    if small:
        why: dict[str, Counter] = {}
        for r in rejected or []:
            why.setdefault(r.label, Counter())[r.reason] += 1

        def one(name: str, n: int) -> str:
            aside = ", ".join(f"{k} {reason}" for reason, k in sorted(why.get(name, Counter()).items()))
            return f"'{name}' has {n}" + (f" (set aside: {aside})" if aside else "")

        raise DataError(
            f"too few usable images to split ({', '.join(one(c, n) for c, n in small.items())}; "
            f"ingest.min_images_per_class = {minimum}). Add images to those classes or remove their folders; "
            "the previous prepared data is unchanged."
        )


def bucket(sha256: str, seed: int) -> float:
    """The image's place in [0, 1), from its content and the seed alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sha256}".encode()).digest()[:8], "big") / 2.0**64


def split_of(sha256: str, cfg: IngestConfig) -> str:
    u = bucket(sha256, cfg.seed)
    return "test" if u < cfg.test_fraction else "val" if u < cfg.test_fraction + cfg.val_fraction else "train"


def hash_split(candidates: list[Candidate], cfg: IngestConfig) -> dict[str, list[Candidate]]:
    """train/val/test by hash bucket, each in content-hash order (independent of listing order)."""
    splits: dict[str, list[Candidate]] = {"train": [], "val": [], "test": []}
    for c in sorted(candidates, key=lambda c: c.sha256):
        splits[split_of(c.sha256, cfg)].append(c)
    return splits


def check_splits(splits: dict[str, list[Candidate]], classes: list[str]) -> list[str]:
    """A class with no training image is an error; one missing from val or test is a warning (returned)."""
    present = {name: {c.class_name for c in members} for name, members in splits.items()}
    no_train = [c for c in classes if c not in present["train"]]
    if no_train:
        raise DataError(
            f"class(es) {no_train} got no training image: too few images for the split fractions. "
            "Add images to them, or lower ingest.val_fraction / ingest.test_fraction."
        )
    return [f"class '{c}' has no {s} image" for s in ("val", "test") for c in classes if c not in present[s]]


def achieved_fractions(splits: dict[str, list[Candidate]], classes: list[str]) -> dict[str, dict[str, float]]:
    """Per class, the share of its images in each split."""
    counts = {s: Counter(c.class_name for c in members) for s, members in splits.items()}
    out = {}
    for name in classes:
        total = sum(counts[s][name] for s in splits) or 1
        out[name] = {s: round(counts[s][name] / total, 4) for s in splits}
    return out


def dataset_hash(pairs: list[tuple[str, str]], classes: list[str]) -> str:
    """Order-independent content hash of (pixel sha256, class name) pairs and the class list."""
    h = hashlib.sha256("\n".join(classes).encode())
    for pair in sorted(f"{d}:{name}" for d, name in pairs):
        h.update(pair.encode())
    return h.hexdigest()
