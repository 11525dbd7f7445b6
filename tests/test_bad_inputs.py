"""The bad-input matrix: images and folders users bring, through ingest, predict and the decoder the server
uses. Each is decoded correctly, set aside with its reason, or stopped with an error naming it; never a
traceback, never a silent drop."""

from __future__ import annotations

import io
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from lab2prod.core.errors import DataError
from lab2prod.core.files import read_json
from lab2prod.core.settings import validate_params
from lab2prod.data.dataset import SplitIndex
from lab2prod.data.images import decode_image
from lab2prod.serve.predict import Classifier, classify, image_files
from tasks.ingest import ingest

BIG = 10**8


def encoded(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def picture(seed: int, size: int = 32) -> np.ndarray:
    """A distinct RGB test picture: blocks of colour, different for every seed."""
    a = np.zeros((size, size, 3), np.uint8)
    a[: size // 2, :, 0] = (37 * seed) % 256
    a[:, : size // 3, 1] = 200
    a[size // 2 :, size // 2 :, 2] = 150
    a[size - 4 :, :4] = (seed * 11) % 256
    return a


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    g16 = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    got = decode_image(encoded(Image.fromarray(g16)), 32, 1, BIG)[..., 0].astype(int)
    assert np.abs(got - np.rint(g16 / 257)).max() <= 1  # 0..65535 -> 0..255 over the whole range
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 200


def test_cmyk_jpeg_decodes_to_its_colours() -> None:
    rgb = picture(3)
    got = decode_image(encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), 32, 3, BIG)
    assert np.abs(got.astype(int) - rgb).mean() < 3


def test_transparency_is_composited_onto_white() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = picture(4)
    rgba[..., 3] = 255
    rgba[:8, :8, 3] = 0  # a transparent corner
    got = decode_image(encoded(Image.fromarray(rgba, "RGBA")), 32, 3, BIG)
    assert (got[:8, :8] == 255).all() and (got[16:, 16:] == picture(4)[16:, 16:]).all()
    palette = Image.fromarray(picture(4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    index = palette.getpixel((20, 20))  # make the colour at (20, 20) the transparent one
    got = decode_image(encoded(palette, transparency=index), 32, 3, BIG)
    assert (got[20, 20] == 255).all() and not (got[0, 20] == 255).all()


def test_exif_orientation_is_applied() -> None:
    tall = picture(5)[:, :16]  # 32 rows, 16 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encoded(Image.fromarray(tall), "JPEG", quality=98, exif=exif.tobytes())
    got = decode_image(data, 32, 3, BIG).astype(int)
    shown = np.asarray(Image.fromarray(np.rot90(tall, k=-1)).resize((32, 32), Image.Resampling.BILINEAR)).astype(int)
    assert got.shape == (32, 32, 3) and np.abs(got - shown).mean() < 6


@pytest.fixture
def matrix_folder(tmp_path: Path) -> Path:
    """Class names with a space and non-ASCII letters; 16-bit, CMYK, palette, EXIF-rotated and plain images;
    a symlink to a file outside (used), a dangling one, a symlinked folder looping back (both set aside)."""
    root = tmp_path / "images"
    for ci, name in enumerate(["a b", "ñandú", "three"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(picture(10 * ci + i)).save(root / name / f"plain{i}.png")
    odd = root / "a b"
    Image.fromarray(np.linspace(0, 65535, 1024).reshape(32, 32).astype(np.uint16)).save(odd / "sixteen.png")
    Image.fromarray(picture(40)).convert("CMYK").save(odd / "cmyk.jpg", quality=95)
    Image.fromarray(picture(41)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
        odd / "palette.png", transparency=0
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(picture(42)[:, :16]).save(odd / "exif.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(picture(43)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "three" / "linked.png")
    os.symlink(root / "three", root / "three" / "loop")
    os.symlink(root / "gone.png", root / "three" / "dangling.png")
    return root


def params_for(source: str, **ingest_cfg: object) -> object:
    return validate_params(
        {"ingest": {"source": source, "image_size": 16, "channels": 3, "extra_sources": [], **ingest_cfg}}
    )


def test_ingest_takes_every_decodable_image_and_sets_aside_the_rest(matrix_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    summary = ingest(params_for(str(matrix_folder), min_images_per_class=3).ingest, out)
    meta = read_json(out / "meta.json")
    assert meta["classes"] == ["a b", "three", "ñandú"]
    report = read_json(out / "quarantine/report.json")
    reasons = {Path(f["path"]).name: f["reason"] for f in report["files"]}
    assert reasons == {"dangling.png": "broken_symlink", "loop": "symlinked_folder"}
    assert summary["images"] == 6 * 3 + 4 + 1  # the plain ones, the four odd ones, the linked file
    sources = {Path(s).name for split in ("train", "val", "test") for s in SplitIndex.read(out, split).sources}
    assert {"sixteen.png", "cmyk.jpg", "palette.png", "exif.jpg", "linked.png"} <= sources


def test_a_class_with_one_image_is_an_error_naming_it(matrix_folder: Path, tmp_path: Path) -> None:
    (matrix_folder / "solo").mkdir()
    Image.fromarray(picture(99)).save(matrix_folder / "solo" / "only.png")
    with pytest.raises(DataError, match=r"'solo' has 1; ingest.min_images_per_class = 3"):
        ingest(params_for(str(matrix_folder), min_images_per_class=3).ingest, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()  # nothing half-written


def test_a_folder_of_only_broken_files_says_what_was_wrong_with_them(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.png").write_bytes(b"not a png")
    (root / "b" / "y.jpg").write_bytes(b"")
    (root / "b" / "z.png").write_bytes(encoded(Image.fromarray(picture(1)))[:50])
    with pytest.raises(DataError) as err:
        ingest(params_for(str(root)).ingest, tmp_path / "prepared")
    assert "'a' has 0 (set aside: 1 not_an_image)" in str(err.value)
    assert "'b' has 0 (set aside: 1 empty_file, 1 truncated)" in str(err.value)


class FlakyFS(MemoryFileSystem):
    """An in-memory bucket whose reads of files named *fail* raise while `broken` is set."""

    protocol = "flaky"
    broken = True

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.replace("flaky://", "memory://", 1))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: object) -> bytes:
        if FlakyFS.broken and "fail" in path:
            raise ConnectionError(f"connection reset while reading {path}")
        return super().cat_file(path, start, end, **kwargs)


def test_a_remote_source_failing_halfway_stops_naming_the_files_and_the_rerun_reads_only_those(
    tmp_path: Path,
) -> None:
    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    fs = FlakyFS()
    bucket = "flaky://bucket-for-test/images"
    for ci, name in enumerate(["cat", "dog"]):
        for i in range(8):
            tag = "fail" if i < 2 else "ok"
            fs.pipe_file(f"/bucket-for-test/images/{name}/{tag}{i}.png", encoded(Image.fromarray(picture(20 * ci + i))))
    cfg = params_for(bucket, workers=1).ingest
    FlakyFS.broken = True
    try:
        with pytest.raises(DataError, match=r"could not read 4 of 16 new file\(s\).*fail0\.png: ConnectionError"):
            ingest(cfg, tmp_path / "prepared")
        assert not (tmp_path / "prepared").exists()
        FlakyFS.broken = False
        summary = ingest(cfg, tmp_path / "prepared")
        assert summary["files_decoded"] == 4 and summary["images"] == 16  # the 12 read before were cached
    finally:
        fs.rm("/bucket-for-test", recursive=True)


def test_predict_gives_every_odd_image_a_class_and_every_broken_one_its_reason(
    matrix_folder: Path, tiny_run: dict, tmp_path: Path
) -> None:
    classifier = Classifier.load(str(tiny_run["onnx"]))  # grey 8x8 digits: any image converts to its input
    (matrix_folder / "three" / "cut.png").write_bytes(encoded(Image.fromarray(picture(7)))[:60])
    files = image_files([str(matrix_folder)])
    rows = {Path(r["file"]).name: r for r in classify(classifier, files, top=2)}
    for name in ("sixteen.png", "cmyk.jpg", "palette.png", "exif.jpg", "linked.png", "plain0.png"):
        assert rows[name]["error"] == "" and len(rows[name]["predictions"]) == 2, rows[name]
    assert rows["cut.png"]["error"].startswith("truncated")
    assert "dangling.png" in rows and rows["dangling.png"]["error"]
    assert any("ñandú" in f for f in files)
