"""Ingest: validated, deduplicated, stratified splits; every unusable file quarantined with its reason."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab2prod.errors import DataError
from lab2prod.images import BadImage, decode_image
from lab2prod.settings import validate_params
from tasks.ingest import ingest
from tests.conftest import TINY, digit_png


def cfg(**over):
    return validate_params({"ingest": {**TINY["ingest"], **over}}).ingest


def load(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(out / f"{split}.npz") as f:
        return f["x"], f["y"]


def test_digits_splits_are_stratified_disjoint_and_described(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    summary = ingest(cfg(), out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["image_shape"] == [8, 8, 1]
    digests = {}
    for split in ("train", "val", "test"):
        x, y = load(out, split)
        assert x.dtype == np.uint8 and y.dtype == np.int64 and x.shape[1:] == (8, 8, 1)
        assert np.bincount(y, minlength=10).tolist() == list(meta["counts"][split].values())
        digests[split] = {hashlib.sha256(img.tobytes()).hexdigest() for img in x}
        # stratified: each class's share within 2 points of its share overall
        assert np.all(np.abs(np.bincount(y, minlength=10) / len(y) - 0.1) < 0.02)
    assert not digests["train"] & digests["test"] and not digests["train"] & digests["val"]
    assert not digests["val"] & digests["test"]
    assert sum(summary["split"].values()) == meta["n_images"] == 1797
    assert len(meta["normalization"]["mean"]) == 1 and 0 < meta["normalization"]["std"][0] < 1


def test_split_is_seeded(tmp_path: Path) -> None:
    ingest(cfg(seed=1), tmp_path / "a")
    ingest(cfg(seed=1), tmp_path / "b")
    ingest(cfg(seed=2), tmp_path / "c")
    a, b, c = (load(tmp_path / d, "test")[0] for d in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    hashes = {json.loads((tmp_path / d / "meta.json").read_text())["dataset_hash"] for d in "abc"}
    assert len(hashes) == 1  # same images, whatever the split: the content hash does not move


def test_broken_files_are_quarantined_with_reasons_and_the_rest_used(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "prepared"
    summary = ingest(cfg(source=str(image_folder), image_size=16, min_images_per_class=5), out)
    report = json.loads((out / "quarantine" / "report.json").read_text())
    reasons = {Path(r["path"]).name: r["reason"] for r in report["files"]}
    assert reasons == {
        "truncated.png": "truncated",
        "notes.jpg": "not_an_image",
        "empty.png": "empty_file",
        "bomb.png": "decompression_bomb",
    }
    assert summary["quarantined"] == {"truncated": 1, "not_an_image": 1, "empty_file": 1, "decompression_bomb": 1}
    # the rejected files are kept for inspection, byte for byte
    assert (out / "quarantine/files/digit_0/notes.jpg").read_text() == "this is not an image\n"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == ["digit_0", "digit_1", "digit_2"] and meta["n_images"] == 36
    assert meta["image_shape"] == [16, 16, 1]  # RGB and JPEG inputs converted and resized


def test_duplicates_are_removed_and_conflicting_labels_set_aside(tmp_path: Path, image_folder: Path) -> None:
    first = sorted((image_folder / "digit_1").glob("*.png"))[0]
    (image_folder / "digit_1" / "copy.png").write_bytes(first.read_bytes())
    other = sorted((image_folder / "digit_2").glob("*.png"))[0]
    (image_folder / "digit_0" / "mislabelled.png").write_bytes(other.read_bytes())
    out = tmp_path / "prepared"
    summary = ingest(cfg(source=str(image_folder)), out)
    assert summary["quarantined"]["duplicate"] == 1
    assert summary["quarantined"]["conflicting_labels"] == 2  # both copies: no one knows which is right
    x = np.concatenate([load(out, s)[0] for s in ("train", "val", "test")])
    assert len({img.tobytes() for img in x}) == len(x)


def test_class_too_small_to_split_is_a_clear_error(tmp_path: Path, image_folder: Path) -> None:
    for path in sorted((image_folder / "digit_2").glob("*"))[2:]:
        path.unlink()
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match="'digit_2' has 2"):
        ingest(cfg(source=str(image_folder)), out)
    assert not out.exists()  # nothing half-written
    assert not list(tmp_path.glob(".prepared*"))  # and no temp dir left behind


def test_failed_rerun_keeps_previous_output(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "prepared"
    ingest(cfg(), out)
    before = (out / "meta.json").read_bytes()
    with pytest.raises(DataError):
        ingest(cfg(source=str(tmp_path / "missing")), out)
    assert (out / "meta.json").read_bytes() == before


def test_fsspec_url_source(tmp_path: Path, image_folder: Path) -> None:
    summary = ingest(cfg(source=f"file://{image_folder}"), tmp_path / "prepared")
    assert summary["classes"] == 3 and summary["images"] == 36


def test_files_outside_class_folders_and_other_suffixes_are_reported(tmp_path: Path, image_folder: Path) -> None:
    (image_folder / "stray.png").write_bytes(b"x")
    (image_folder / "digit_1" / "README.txt").write_text("notes")
    out = tmp_path / "prepared"
    summary = ingest(cfg(source=str(image_folder)), out)
    assert summary["quarantined"]["outside_class_folder"] == 1
    assert summary["quarantined"]["not_an_image_extension"] == 1


def test_decode_image_converts_and_resizes() -> None:
    import io

    buf = io.BytesIO()
    digit_png(5, 20).convert("RGB").save(buf, format="WEBP")
    arr = decode_image(buf.getvalue(), size=12, channels=3, max_pixels=10_000)
    assert arr.shape == (12, 12, 3) and arr.dtype == np.uint8
    big = io.BytesIO()
    Image.new("L", (200, 200)).save(big, format="PNG")
    with pytest.raises(BadImage) as err:  # over the configured pixel limit, even if a small file
        decode_image(big.getvalue(), size=12, channels=1, max_pixels=30_000)
    assert err.value.reason == "decompression_bomb"
