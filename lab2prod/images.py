"""Image decoding, exactly one way for ingest, predict and serving: validated, EXIF-rotated,
converted to the configured channels and resized to a square."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class BadImage(Exception):
    """A file that cannot be used as an image; `reason` is a stable short code for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Decode, validate and resize one image file's bytes to uint8 (size, size, channels)."""
    if not data:
        raise BadImage("empty_file", "the file has zero bytes")
    # PIL's own bomb guard: an error above 2x the limit, a warning above 1x; we make both errors.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "no image format recognises these bytes") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corruption so
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise BadImage(reason, str(exc)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
