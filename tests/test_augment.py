"""Augment: seeded, shape-preserving, never mirrors by default, and a preview a person can check."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab2prod.layout import Workspace
from lab2prod.settings import validate_params
from tasks.augment import augment, augment_images
from tasks.ingest import ingest
from tests.conftest import TINY


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "prepared"
    ingest(validate_params(TINY).ingest, out)
    return out


def in_tmp(prepared: Path, tmp_path: Path) -> Workspace:
    """Read the shared prepared split, write into this test's tmp_path (aug/, preview.png)."""
    return Workspace(prepared=prepared, augmented=tmp_path / "aug", augment_preview=tmp_path / "preview.png")


def acfg(**over):
    return validate_params({"augment": {**TINY["augment"], **over}}).augment


def test_copies_zero_passes_the_split_through(tmp_path: Path, prepared: Path) -> None:
    summary = augment(acfg(copies=0), in_tmp(prepared, tmp_path))
    with np.load(prepared / "train.npz") as a, np.load(tmp_path / "aug/train.npz") as b:
        assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
    assert summary["total"] == summary["original"]


def test_copies_multiply_the_split_keep_labels_and_change_pixels(tmp_path: Path, prepared: Path) -> None:
    augment(acfg(copies=2), in_tmp(prepared, tmp_path))
    with np.load(prepared / "train.npz") as a, np.load(tmp_path / "aug/train.npz") as b:
        n = len(a["y"])
        assert b["x"].shape == (3 * n, *a["x"].shape[1:]) and b["x"].dtype == np.uint8
        assert np.array_equal(b["y"], np.tile(a["y"], 3))
        assert np.array_equal(b["x"][:n], a["x"])  # originals kept first
        changed = np.mean([not np.array_equal(b["x"][n + i], a["x"][i]) for i in range(n)])
        assert changed > 0.9


def test_augmentation_is_seeded() -> None:
    x = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8)
    assert np.array_equal(augment_images(x, acfg(seed=3)), augment_images(x, acfg(seed=3)))
    assert not np.array_equal(augment_images(x, acfg(seed=3)), augment_images(x, acfg(seed=4)))


def test_no_mirroring_unless_asked() -> None:
    # A bright left half, with no rotation/shift/scale/colour: only a flip could move it right.
    x = np.zeros((64, 8, 8, 1), np.uint8)
    x[:, :, :4] = 255
    still = dict(rotation_deg=0, shift=0, scale_min=1.0, scale_max=1.0, brightness=0, contrast=0)
    kept = augment_images(x, acfg(**still))
    assert np.array_equal(kept, x)
    flipped = augment_images(x, acfg(**still, horizontal_flip=True))
    mirrored = sum(int(img[:, 4:].mean() > img[:, :4].mean()) for img in flipped)
    assert 10 < mirrored < 54  # about half


def test_preview_is_a_real_image(tmp_path: Path, prepared: Path) -> None:
    augment(acfg(copies=3), in_tmp(prepared, tmp_path))
    with Image.open(tmp_path / "preview.png") as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 100
