"""A real, human-written short-text classification set, built offline: which library is this docstring from?

Each text is the first paragraph of the docstring of a public function, class, method or property, and its
label is the installed library it was written for (8 classes, see `LIBRARIES`). Nothing is downloaded: the
texts come from the packages in this virtual environment, so the set stands in for a user's folder of
labelled texts (`<root>/<class>/<n>.txt`) on a machine without internet.

The libraries are walked one per subprocess (their imports are heavy and have side effects), in sorted
module and attribute order, skipping private modules (`_name`), test packages, numpy's build tools and
modules that fail to import, up to a per-library cap. A text is kept when its first paragraph (up to the
first blank line, whitespace collapsed) is 20-400 characters long and names neither its library nor the
library's import alias ("numpy", "np.", "torch", ...), so the label is not written in the text; texts found
in more than one library, or twice, are dropped. A seeded sample of `per_class` texts per class is returned: the same
installed packages and seed give the same set.

    python benchmarks/text_data.py /tmp/texts                    # 8 x 350 texts into /tmp/texts/<class>/
    python benchmarks/text_data.py /tmp/texts --csv --baseline   # also /tmp/texts.csv; TF-IDF + LR scores
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import pkgutil
import random
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

# class label -> (top-level package, patterns naming it; matched case-insensitively anywhere in a text)
LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "numpy": ("numpy", (r"numpy", r"\bnp\.")),
    "sympy": ("sympy", (r"sympy",)),
    "torch": ("torch", (r"torch",)),
    "sklearn": ("sklearn", (r"sklearn", r"scikit")),
    "matplotlib": ("matplotlib", (r"matplotlib", r"\bmpl\b", r"\bplt\.", r"pyplot")),
    "sqlalchemy": ("sqlalchemy", (r"sqlalchemy",)),
    "networkx": ("networkx", (r"networkx", r"\bnx\.")),
    "rich": ("rich", (r"\brich\b",)),
}

MIN_CHARS, MAX_CHARS = 20, 400
MAX_MODULES = 2000  # per library, in sorted walk order (torch has about 850 public ones, sympy 760)
MAX_TEXTS = 20000  # usable texts per library, in walk order
HARVEST_TIMEOUT_S = 600  # one library's subprocess
# Module name parts never imported: test suites, vendored copies, scripts.
SKIP_PARTS = frozenset(
    {"tests", "test", "testing", "conftest", "benchmarks", "examples", "externals", "vendor", "vendored", "setup"}
)
# Whole subpackages never imported: numpy's build tools are about compilers and Fortran, not arrays.
SKIP_MODULES = frozenset({"numpy.distutils", "numpy.f2py"})
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$", re.DOTALL)


def first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring (up to its first blank line), whitespace collapsed.

    A leading signature line as C extensions write it (`add(x1, x2, /, out=None)`) is skipped.
    """
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc))]
    paragraphs = [p for p in paragraphs if p]
    while paragraphs and _SIGNATURE.match(paragraphs[0]):
        paragraphs.pop(0)
    return paragraphs[0] if paragraphs else ""


def _modules(package: str) -> Iterator[types.ModuleType]:
    """The public modules of `package` that import, depth first in sorted order, at most MAX_MODULES."""
    import importlib

    count = 0
    stack = [package]
    while stack and count < MAX_MODULES:
        name = stack.pop()
        try:
            module = importlib.import_module(name)
        except BaseException:  # ImportError, missing optional dependencies, SystemExit from scripts, ...
            continue
        count += 1
        yield module
        path = getattr(module, "__path__", None)
        if path is None:
            continue
        children = sorted(
            f"{name}.{info.name}"
            for info in pkgutil.iter_modules(path)
            if not info.name.startswith("_")
            and info.name not in SKIP_PARTS
            and f"{name}.{info.name}" not in SKIP_MODULES
        )
        stack.extend(reversed(children))  # so the smallest name is popped first


def _documented(module: types.ModuleType, package: str) -> Iterator[tuple[object, str]]:
    """(object, docstring) for the public functions, classes, methods and properties defined in `package`."""
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        owner = getattr(obj, "__module__", None)
        if not isinstance(owner, str) or not (owner == package or owner.startswith(package + ".")):
            continue  # re-exported from elsewhere, or not a function or class
        if not (inspect.isclass(obj) or callable(obj)):
            continue
        yield obj, obj.__doc__
        if not inspect.isclass(obj):
            continue
        for attr in sorted(vars(obj)):
            if attr.startswith("_"):
                continue
            member = vars(obj)[attr]
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if isinstance(member, property) or callable(member):
                yield member, member.__doc__


def harvest(package: str, patterns: tuple[str, ...]) -> list[str]:
    """The usable texts of one library, in walk order (unique). Imports the library: call it in a subprocess."""
    import warnings

    warnings.simplefilter("ignore")
    banned = re.compile("|".join(patterns), re.IGNORECASE)
    seen_objects: set[int] = set()
    texts: dict[str, None] = {}
    for module in _modules(package):
        try:
            found = list(_documented(module, package))
        except Exception:  # a module whose attributes raise on access
            continue
        for obj, doc in found:
            if id(obj) in seen_objects or not isinstance(doc, str):
                continue
            seen_objects.add(id(obj))
            text = first_paragraph(doc)
            if MIN_CHARS <= len(text) <= MAX_CHARS and not banned.search(text):
                texts[text] = None
        if len(texts) >= MAX_TEXTS:
            break
    return list(texts)[:MAX_TEXTS]


def _harvest_in_subprocess(package: str, patterns: tuple[str, ...]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "texts.json"
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--harvest", package, str(out), *patterns]
        subprocess.run(
            cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=HARVEST_TIMEOUT_S, check=False,
        )  # fmt: skip
        if not out.exists():
            raise RuntimeError(f"harvesting {package!r} failed: {' '.join(cmd)}")
        return json.loads(out.read_text(encoding="utf-8"))


def docstring_pools() -> dict[str, list[str]]:
    """Every usable text of each library in `LIBRARIES`, in walk order; {label: texts}.

    A text written in two libraries (a stock phrase such as "Return self.") has no single label and is dropped.
    """
    pools = {label: _harvest_in_subprocess(package, patterns) for label, (package, patterns) in LIBRARIES.items()}
    owners: dict[str, int] = {}
    for pool in pools.values():
        for text in pool:
            owners[text] = owners.get(text, 0) + 1
    return {label: [t for t in pool if owners[t] == 1] for label, pool in pools.items()}


def docstring_texts(
    per_class: int = 350, seed: int = 0, *, pools: Mapping[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """`per_class` docstring paragraphs per library (`LIBRARIES`), sampled with `seed`; {label: texts}.

    `pools` (from `docstring_pools`) saves walking the libraries again.
    """
    pools = docstring_pools() if pools is None else pools
    rng = random.Random(seed)
    texts = {}
    for label, pool in pools.items():
        if len(pool) < per_class:
            raise ValueError(f"{label}: only {len(pool)} usable texts, {per_class} asked for")
        texts[label] = rng.sample(list(pool), per_class)
    return texts


def write_folder(root: Path, texts: Mapping[str, list[str]]) -> Path:
    """Write `<root>/<class>/<00001>.txt` (UTF-8), one text per file; returns `root`."""
    root = Path(root)
    for label, items in texts.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(items, start=1):
            (folder / f"{i:05d}.txt").write_text(text + "\n", encoding="utf-8")
    return root


def write_table(path: Path, texts: Mapping[str, list[str]]) -> Path:
    """Write a CSV with columns `text,label`, one row per text; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for label, items in texts.items():
            writer.writerows([text, label] for text in items)
    return path


def baseline(texts: Mapping[str, list[str]], seed: int = 0) -> dict[str, dict[str, float]]:
    """TF-IDF + logistic regression on a stratified 70/15/15 split: word 1-2 grams and char 2-5 grams.

    Returns {variant: {"val_accuracy", "test_accuracy", "test_macro_f1"}} and prints the test figures.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    x = [t for items in texts.values() for t in items]
    y = [label for label, items in texts.items() for _ in items]
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    variants = {
        "word 1-2 gram TF-IDF + LR": TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        "char 2-5 gram TF-IDF + LR": TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    }
    scores = {}
    print(f"baseline: {len(x_train)} train / {len(x_val)} val / {len(x_test)} test texts, seed {seed}")
    for name, vectorizer in variants.items():
        model = make_pipeline(vectorizer, LogisticRegression(C=10.0, max_iter=2000))
        model.fit(x_train, y_train)
        predicted = model.predict(x_test)
        scores[name] = {
            "val_accuracy": accuracy_score(y_val, model.predict(x_val)),
            "test_accuracy": accuracy_score(y_test, predicted),
            "test_macro_f1": f1_score(y_test, predicted, average="macro"),
        }
        s = scores[name]
        print(f"  {name}: test accuracy {s['test_accuracy']:.3f}, macro F1 {s['test_macro_f1']:.3f}")
    return scores


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--harvest"]:  # the per-library subprocess: --harvest PACKAGE OUT PATTERN...
        package, out, *patterns = argv[1:]
        with open(os.devnull, "w") as quiet:
            sys.stdout = sys.stderr = quiet  # modules that print on import
            texts = harvest(package, tuple(patterns))
        Path(out).write_text(json.dumps(texts), encoding="utf-8")
        os._exit(0)  # don't wait for threads or atexit hooks that the imported modules started
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write <class>/<00001>.txt into")
    parser.add_argument("--per-class", type=int, default=350, help="texts per class (default 350)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and split seed (default 0)")
    parser.add_argument("--csv", action="store_true", help="also write OUT_DIR.csv (columns text,label)")
    parser.add_argument("--baseline", action="store_true", help="score TF-IDF + logistic regression baselines")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pools = docstring_pools()
    texts = docstring_texts(args.per_class, args.seed, pools=pools)
    built = time.perf_counter() - start
    write_folder(args.out_dir, texts)
    for label, items in texts.items():
        print(f"{label:12s} {len(items):5d} texts (of {len(pools[label])} usable)")
    print(f"{sum(map(len, texts.values()))} texts in {args.out_dir} ({built:.1f} s to build)")
    if args.csv:
        print(f"table: {write_table(args.out_dir.with_suffix('.csv'), texts)}")
    if args.baseline:
        baseline(texts, args.seed)


if __name__ == "__main__":
    main()
