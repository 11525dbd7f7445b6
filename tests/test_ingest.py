"""Ingest: validated, deduplicated splits that never move, in shards; incremental; every unusable file
quarantined with its reason."""

import csv
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from lab2prod.core.errors import DataError
from lab2prod.core.settings import validate_params
from lab2prod.data.dataset import SplitIndex
from lab2prod.data.images import BadImage, decode_image, prepare_image
from models.nets.inputs import load_split
from tasks.ingest import ingest
from tests.conftest import TINY, digit_png


def cfg(**over):
    return validate_params({"ingest": {**TINY["ingest"], **over}}).ingest


def load(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split(out, split)
    return x.numpy(), y.numpy()


def test_digits_splits_are_balanced_disjoint_and_described(tmp_path: Path) -> None:
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
    # hash buckets: each class's achieved share of each split within 8 points of the configured one
    wanted = {"train": 0.6, "val": 0.15, "test": 0.25}
    for shares in meta["achieved_fractions"].values():
        assert all(abs(shares[s] - wanted[s]) < 0.08 for s in wanted), shares
    assert not digests["train"] & digests["test"] and not digests["train"] & digests["val"]
    assert not digests["val"] & digests["test"]
    assert sum(summary["split"].values()) == meta["n_images"] == 1797
    assert len(meta["normalization"]["mean"]) == 1 and 0 < meta["normalization"]["std"][0] < 1


def test_split_is_seeded(tmp_path: Path) -> None:
    ingest(cfg(seed=1), tmp_path / "a")
    ingest(cfg(seed=1), tmp_path / "b")
    ingest(cfg(seed=2), tmp_path / "c")
    a, b, c = (load(tmp_path / d, "test")[0] for d in "abc")
    assert np.array_equal(a, b) and (len(a) != len(c) or not np.array_equal(a, c))
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


def test_a_failed_ingest_call_leaves_the_previous_output_untouched(tmp_path: Path, image_folder: Path) -> None:
    """The library function alone (it writes a new folder and renames it into place). Through DVC, which deletes
    a stage's outputs before it runs, the same guarantee is `lab2prod run`'s: tests/test_pipeline.py's end-to-end
    test fails an ingest both with and without --set and compares every workspace file before and after."""
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


def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path: Path, image_folder: Path) -> None:
    """Jupyter's .ipynb_checkpoints, macOS's .DS_Store and __MACOSX left in a source are skipped and reported."""
    good = next((image_folder / "digit_1").glob("*.png"))
    for where in (".ipynb_checkpoints", "__MACOSX", "digit_2/.ipynb_checkpoints"):
        (image_folder / where).mkdir(parents=True)
        shutil.copy2(good, image_folder / where / "copy.png")
    (image_folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (image_folder / "digit_0" / "._0.png").write_bytes(good.read_bytes())
    summary = ingest(cfg(source=str(image_folder)), tmp_path / "prepared")
    meta = json.loads((tmp_path / "prepared/meta.json").read_text())
    assert meta["classes"] == ["digit_0", "digit_1", "digit_2"] and summary["images"] == 36
    assert summary["quarantined"]["hidden"] == 5


def test_decode_image_converts_and_resizes() -> None:
    buf = io.BytesIO()
    digit_png(5, 20).convert("RGB").save(buf, format="WEBP")
    arr = decode_image(buf.getvalue(), size=12, channels=3, max_pixels=10_000)
    assert arr.shape == (12, 12, 3) and arr.dtype == np.uint8
    big = io.BytesIO()
    Image.new("L", (200, 200)).save(big, format="PNG")
    with pytest.raises(BadImage) as err:  # over the configured pixel limit, even if a small file
        decode_image(big.getvalue(), size=12, channels=1, max_pixels=30_000)
    assert err.value.reason == "decompression_bomb"


def split_members(out: Path) -> dict[str, str]:
    """content hash -> split, for every prepared image."""
    return {sha: split for split in ("train", "val", "test") for sha in SplitIndex.read(out, split).sha256}


def test_adding_ten_percent_new_images_moves_no_existing_image(tmp_path: Path, image_folder: Path) -> None:
    digits = load_digits()
    before_out, after_out = tmp_path / "before", tmp_path / "after"
    ingest(cfg(source=str(image_folder)), before_out)
    before = split_members(before_out)
    for cls in (0, 1, 2):  # 10 % more: 4 new images per class after the 12 there
        for i in np.flatnonzero(digits.target == cls)[12:16]:
            digit_png(int(i), 24).save(image_folder / f"digit_{cls}" / f"new_{i}.png")
    summary = ingest(cfg(source=str(image_folder)), after_out, cache_path=tmp_path / "c.sqlite")
    after = split_members(after_out)
    assert summary["images"] == len(before) + 12 and len(after) == len(before) + 12
    assert {sha: after[sha] for sha in before} == before  # not one existing image changed split


def test_reingest_decodes_only_new_and_changed_files(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "prepared"
    first = ingest(cfg(source=str(image_folder)), out)
    assert first["files_decoded"] == 40  # 36 images + 4 broken files: every one read once
    again = ingest(cfg(source=str(image_folder)), out)
    assert again["files_decoded"] == 0 and again["images"] == first["images"]
    assert again["quarantined"] == first["quarantined"]  # cached rejections are still reported
    digit_png(1700, 24).save(image_folder / "digit_1" / "added.png")
    (image_folder / "digit_0" / "empty.png").write_bytes(b"not an image either")  # a changed file
    third = ingest(cfg(source=str(image_folder)), out)
    assert third["files_decoded"] == 2 and third["images"] == first["images"] + 1
    assert third["quarantined"]["not_an_image"] == 2 and "empty_file" not in third["quarantined"]
    assert ingest(cfg(source=str(image_folder), image_size=12), out)["files_decoded"] == 41  # new settings


def test_shards_are_plain_webdataset_tars_matching_the_index(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "prepared"
    ingest(cfg(source=str(image_folder), image_size=16), out)
    meta = json.loads((out / "meta.json").read_text())
    with open(out / "train/index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with tarfile.open(out / "train/shard-00000.tar") as tar:
        names = tar.getnames()
        for row in rows[:5]:
            image_name = next(n for n in names if n.startswith(row["key"] + ".") and n.split(".")[1] in ("png", "jpg"))
            pixels = np.asarray(Image.open(io.BytesIO(tar.extractfile(image_name).read())).convert("L"))
            assert hashlib.sha256(pixels.tobytes()).hexdigest() == row["sha256"]
            assert tar.extractfile(row["key"] + ".cls").read().decode() == row["label"]
            assert (
                json.loads(tar.extractfile(row["key"] + ".json").read())["class"] == meta["classes"][int(row["label"])]
            )
    assert len(names) == 3 * len(rows)


def test_image_at_the_target_size_is_stored_as_it_is_others_are_encoded() -> None:
    jpeg = io.BytesIO()
    digit_png(3, 16).convert("RGB").save(jpeg, "JPEG", quality=90)
    pixels, stored, ext = prepare_image(jpeg.getvalue(), 16, 3, 10**6, "stretch", "png", 95)
    assert stored == jpeg.getvalue() and ext == "jpg" and pixels.shape == (16, 16, 3)
    pixels, stored, ext = prepare_image(jpeg.getvalue(), 8, 1, 10**6, "stretch", "png", 95)
    assert ext == "png" and np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), pixels[..., 0])


def test_crop_resize_keeps_the_aspect_ratio() -> None:
    wide = np.zeros((20, 60), np.uint8)
    wide[:, 20:40] = 255  # a white square in the middle of a wide black image
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    cropped = decode_image(buf.getvalue(), 10, 1, 10**6, resize="crop")[..., 0]
    stretched = decode_image(buf.getvalue(), 10, 1, 10**6, resize="stretch")[..., 0]
    assert cropped.min() > 200  # the centre square only: all white
    assert stretched[:, 0].max() == 0 and stretched[:, 5].min() > 200  # squashed: black sides remain


def test_bucket_source_is_decoded_by_worker_processes_and_cached(tmp_path: Path) -> None:
    """fsspec's in-memory filesystem stands in for a bucket: same listing, batched fetches, no local paths."""
    import fsspec

    fs = fsspec.filesystem("memory")
    digits = load_digits()
    for i in range(90):  # enough files for two worker processes
        buf = io.BytesIO()
        digit_png(i, 12).save(buf, "PNG")
        fs.pipe(f"/bucket-{tmp_path.name}/digit_{digits.target[i]}/{i}.png", buf.getvalue())
    source = f"memory://bucket-{tmp_path.name}"
    first = ingest(cfg(source=source, workers=2, min_images_per_class=3), tmp_path / "prepared")
    assert first["files_decoded"] == 90 and first["images"] + sum(first["quarantined"].values()) == 90
    again = ingest(cfg(source=source, workers=2, min_images_per_class=3), tmp_path / "prepared")
    assert again["files_decoded"] == 0 and again["split"] == first["split"]
    fs.rm(f"/bucket-{tmp_path.name}", recursive=True)


def test_adding_images_keeps_earlier_shards_byte_for_byte(tmp_path: Path, image_folder: Path) -> None:
    """Append-only shards: a re-ingest after an addition links the unchanged shards and writes new ones."""
    out = tmp_path / "prepared"
    small_shards = cfg(source=str(image_folder), shard_mb=0.01)  # ~6 images per shard
    ingest(small_shards, out)
    for i in range(40):  # new images, some of them in train
        digit_png(1000 + i, 24).save(image_folder / "digit_1" / f"big_{i}.png")
    before = {p.name: p.read_bytes() for p in (out / "train").glob("shard-*.tar")}
    inode = (out / "train/shard-00000.tar").stat().st_ino
    summary = ingest(small_shards, out)
    after = SplitIndex.read(out, "train")
    assert (out / "train/shard-00000.tar").read_bytes() == before["shard-00000.tar"]
    assert (out / "train/shard-00000.tar").stat().st_ino == inode  # linked, not rewritten
    assert summary["images"] == 36 + 40 - summary["quarantined"].get("duplicate", 0)
    for i in range(len(after)):  # every image, old and new, reads back with its content hash
        assert hashlib.sha256(after.image(i).tobytes()).hexdigest() == after.sha256[i]
