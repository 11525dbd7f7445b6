"""Synthetic image folders for scale tests: `<root>/<class>/<n>.jpg`, N images of a given size.

Each class has its own colour and shape family (ellipses, rectangles, triangles, ...) drawn at a
random place, size and rotation over a noisy background, so a network can learn them and no two
images are alike. Written by one process per core.

    python -m benchmarks.synthetic /tmp/photos --images 32000 --size 224 --classes 10
    python -m benchmarks.synthetic /tmp/photos --images 320 --start 32000   # add 320 more (1 %)
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image, ImageDraw
from rich.progress import Progress

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring")


def draw(index: int, size: int, n_classes: int) -> tuple[int, bytes]:
    """Image `index` (deterministic): its class and its JPEG bytes."""
    rng = np.random.default_rng(index)
    label = index % n_classes
    hue = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 29 + 160) % 256])
    background = rng.normal(128, 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(background)
    pen = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.12, 0.3) * size
        cx, cy = rng.uniform(r, size - r, 2)
        colour = tuple(int(c) for c in (hue + rng.normal(0, 20, 3)).clip(0, 255))
        box = [cx - r, cy - r, cx + r, cy + r]
        shape = SHAPES[label % len(SHAPES)]
        if shape == "ellipse":
            pen.ellipse(box, fill=colour)
        elif shape == "rectangle":
            pen.rectangle(box, fill=colour)
        elif shape == "triangle":
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        elif shape == "cross":
            pen.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=colour)
            pen.rectangle([cx - r / 4, cy - r, cx + r / 4, cy + r], fill=colour)
        else:
            pen.ellipse(box, outline=colour, width=max(2, int(r / 4)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return label, out.getvalue()


def _write_range(root: str, start: int, stop: int, size: int, n_classes: int) -> int:
    for i in range(start, stop):
        label, data = draw(i, size, n_classes)
        path = Path(root) / f"class_{label:02d}" / f"{i:07d}.jpg"
        path.write_bytes(data)
    return stop - start


def make_folder(root: Path, images: int, size: int = 224, n_classes: int = 10, start: int = 0) -> int:
    """Write images start..start+images-1 into `root`; returns the bytes the folder holds."""
    for c in range(n_classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    step = 500
    ranges = [(s, min(s + step, start + images)) for s in range(start, start + images, step)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool, Progress(transient=True) as progress:
        task = progress.add_task(f"writing {images} synthetic images", total=images)
        futures = [pool.submit(_write_range, str(root), a, b, size, n_classes) for a, b in ranges]
        for f in futures:
            progress.advance(task, f.result())
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


def main(
    root: Annotated[Path, typer.Argument(help="Folder to write <class>/<n>.jpg into.")],
    images: Annotated[int, typer.Option(help="How many images to write.")] = 2000,
    size: Annotated[int, typer.Option(help="Side of the square images, px.")] = 224,
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    start: Annotated[int, typer.Option(help="Index of the first image (to add to an existing folder).")] = 0,
) -> None:
    """Write a synthetic image folder (deterministic: image i is always the same)."""
    total = make_folder(root, images, size, classes, start)
    print(f"{root}: {images} images written; the folder holds {total / 2**20:.1f} MB of JPEG")


if __name__ == "__main__":
    typer.run(main)
