"""Image decoding, exactly one way for ingest, predict and serving: validated, EXIF-rotated, 16-bit grey
scaled to 8 bits, transparency composited onto white, converted to the configured channels (CMYK, palette
and the rest through Pillow) and resized to a square."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class BadImage(Exception):
    """A file that cannot be used as an image; `reason` is a stable short code for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


DECODER_VERSION = 2  # bump when decoding changes what a file decodes to: the ingest cache re-decodes everything
PASS_THROUGH = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # stored as they are when already the target size
ENCODINGS = {"png": ("PNG", "png"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}


def decode_image(data: bytes, size: int, channels: int, max_pixels: int, resize: str = "stretch") -> np.ndarray:
    """Decode, validate and resize one image file's bytes to uint8 (size, size, channels)."""
    return _decode(data, size, channels, max_pixels, resize)[0]


def prepare_image(
    data: bytes, size: int, channels: int, max_pixels: int, resize: str, encoding: str, quality: int
) -> tuple[np.ndarray, bytes, str]:
    """Decode and validate a file; return its pixels and the bytes to store at the target size.

    A JPEG, PNG or WebP file that already has the target size is stored as it is (nothing lost, nothing
    re-encoded); any other is encoded at the target size as `encoding` (PNG is lossless).
    """
    pixels, source_format, resized = _decode(data, size, channels, max_pixels, resize)
    if not resized and source_format in PASS_THROUGH:
        return pixels, data, PASS_THROUGH[source_format]
    fmt, ext = ENCODINGS[encoding]
    out = io.BytesIO()
    img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, "L" if channels == 1 else "RGB")
    img.save(out, fmt, **({} if fmt == "PNG" else {"quality": quality}))
    return pixels, out.getvalue(), ext


BACKGROUND = (255, 255, 255)  # what transparent pixels become: the white a viewer or a page shows


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey scaled (not clipped) to 8 bits; transparency composited onto white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        top = 65535 if arr.max(initial=0) <= 65535 else int(arr.max())
        return Image.fromarray(np.rint(np.clip(arr, 0, None) * (255 / top)).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.rint(np.clip(arr * scale, 0, 255)).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img


def check_pixels(img: Image.Image, max_pixels: int) -> None:
    """The decompression-bomb guard: refuse an opened image whose header states over `max_pixels` pixels,
    before any pixel is decoded (Pillow opens lazily). Thread-safe: it reads no global (Pillow's own guard,
    Image.MAX_IMAGE_PIXELS and its warning, is a process-wide setting that threads cannot change safely)."""
    width, height = img.size
    if width * height > max_pixels:
        raise BadImage(
            "decompression_bomb",
            f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels} (max_image_pixels)",
        )


def _decode(data: bytes, size: int, channels: int, max_pixels: int, resize: str) -> tuple[np.ndarray, str, bool]:
    if not data:
        raise BadImage("empty_file", "the file has zero bytes")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # Pillow's default, never changed here
    try:
        img = Image.open(io.BytesIO(data))
        check_pixels(img, max_pixels)  # before .load(): what the header states is checked before it is decoded
        source_format = img.format or ""
        drafted = source_format == "JPEG" and min(img.size) >= 2 * size
        if drafted:
            img.draft("L" if channels == 1 else "RGB", (size, size))  # decode at 1/2..1/8 scale: faster
        img.load()
    except Image.DecompressionBombError as exc:  # Pillow's own guard (2x its global default): over ours too
        raise BadImage("decompression_bomb", f"{exc} (the limit here: {max_pixels} pixels, max_image_pixels)") from None
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "no image format recognises these bytes") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corruption so
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise BadImage(reason, str(exc)) from None
    ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy of an image with no rotation
    img = _to_8bit(img).convert("L" if channels == 1 else "RGB")
    resized = drafted or img.size != (size, size)
    if resized and resize == "crop":  # shorter side to `size`, then the centre square: no distortion
        img = ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
    elif resized:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels), source_format, resized
