"""Real, human-written short texts for the text tests, from what every Python ships: the first paragraph of the
docstrings of three standard-library packages, the class being the package (a sentence from `email`, `asyncio`
or `unittest`?). Deterministic for a Python version; no download. benchmarks/text_data.py makes the larger set."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

PACKAGES = ("email", "asyncio", "unittest")


def stdlib_texts(per_class: int = 40, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[str]]:
    """Up to `per_class` distinct docstring paragraphs per package, in a fixed order."""
    out: dict[str, list[str]] = {}
    for package in packages:
        root = importlib.import_module(package)
        names = [package] + sorted(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))
        texts: list[str] = []
        for name in names:
            if ".test" in name or "._" in name:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that does not import here is skipped
                continue
            for _, obj in sorted(vars(module).items()):
                if getattr(obj, "__module__", None) != name or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                members = [obj] + [v for _, v in sorted(vars(obj).items()) if inspect.isfunction(v)] * inspect.isclass(
                    obj
                )
                for member in members:
                    doc = inspect.cleandoc(member.__doc__ or "")
                    text = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
                    if 20 <= len(text) <= 300 and package not in text.lower() and text not in texts:
                        texts.append(text)
        out[package] = texts[:per_class]
    return out


def write_text_folder(root: Path, texts: dict[str, list[str]]) -> Path:
    for name, items in texts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(items):
            (root / name / f"{i:04d}.txt").write_text(text + "\n", encoding="utf-8")
    return root
