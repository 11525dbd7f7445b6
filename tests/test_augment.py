"""Augment: a seeded policy applied online (nothing stored per image by default), offline copies only
when asked for, never mirrors by default, and a preview a person can check."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab2prod.core.files import read_json
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import validate_params
from lab2prod.data.dataset import SplitIndex
from models.training.augmentation import augment_images
from tasks.augment import augment
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


def test_default_stores_the_policy_and_nothing_per_image(tmp_path: Path, prepared: Path) -> None:
    summary = augment(acfg(), in_tmp(prepared, tmp_path))
    assert [p.name for p in (tmp_path / "aug").iterdir()] == ["policy.json"]
    policy = read_json(tmp_path / "aug/policy.json")
    assert policy["online"] and policy["image_size"] == 8 and policy["settings"]["seed"] == acfg().seed
    assert summary["offline_bytes"] == 0


def test_offline_copies_when_asked_keep_labels_and_change_pixels(tmp_path: Path, prepared: Path) -> None:
    summary = augment(acfg(offline_copies=2), in_tmp(prepared, tmp_path))
    original, copies = SplitIndex.read(prepared, "train"), SplitIndex.read(tmp_path / "aug", "copies")
    n = len(original)
    assert len(copies) == 2 * n and np.array_equal(copies.labels, np.tile(original.labels, 2))
    a, b = original.images(range(n)), copies.images(range(n))
    assert np.mean([not np.array_equal(a[i], b[i]) for i in range(n)]) > 0.9
    assert summary["offline_bytes"] > 0


def test_augmentation_is_seeded() -> None:
    x = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8)
    cfg = acfg()
    assert np.array_equal(augment_images(x, cfg, 2, seed=3), augment_images(x, cfg, 2, seed=3))
    assert not np.array_equal(augment_images(x, cfg, 2, seed=3), augment_images(x, cfg, 2, seed=4))


def test_no_mirroring_unless_asked() -> None:
    # A bright left half, with no rotation/shift/scale/colour: only a flip could move it right.
    x = np.zeros((64, 8, 8, 1), np.uint8)
    x[:, :, :4] = 255
    still = dict(rotation_deg=0, shift=0, scale_min=1.0, scale_max=1.0, brightness=0, contrast=0)
    kept = augment_images(x, acfg(**still), 1, seed=0)
    assert np.array_equal(kept, x)
    flipped = augment_images(x, acfg(**still, horizontal_flip=True), 1, seed=0)
    mirrored = sum(int(img[:, 4:].mean() > img[:, :4].mean()) for img in flipped)
    assert 10 < mirrored < 54  # about half


def test_random_resized_crop_zooms_in() -> None:
    x = np.zeros((32, 16, 16, 1), np.uint8)
    x[:, 4:12, 4:12] = 255  # a centred square covering a quarter of the image
    still = dict(rotation_deg=0, shift=0, scale_min=1.0, scale_max=1.0, brightness=0, contrast=0)
    cropped = augment_images(x, acfg(**still, crop_scale_min=0.2), 1, seed=0)
    assert cropped.shape == x.shape
    assert (cropped > 127).mean() > (x > 127).mean() * 1.2  # crops of the middle enlarge the square


def test_preview_shows_one_image_per_class(tmp_path: Path, prepared: Path) -> None:
    augment(acfg(preview_images=10), in_tmp(prepared, tmp_path))
    with Image.open(tmp_path / "preview.png") as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 10 * 100  # ten rows, ~130 px each
