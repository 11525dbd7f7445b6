"""Shared fixtures: tiny settings, real digits data, image folders with broken files mixed in.

Every test runs on the CPU with tiny settings (few epochs, narrow nets, 8x8 images), in tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image
from sklearn.datasets import load_digits

from lab2prod.core.layout import Workspace
from lab2prod.core.settings import Params, validate_params

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "ingest": {"image_size": 8, "extra_sources": []},
    "augment": {"preview_images": 2},
    # train.lr is the rate at batch 32: a batch of 128 trains at 0.005 x sqrt(128 / 32) = 0.01
    "train": {"width": 8, "epochs": 4, "batch_size": 128, "lr": 0.005, "accelerator": "cpu"},
    # A 4-epoch model of width 8 need not beat the baseline; the bar is lowered on purpose so that the tiny run
    # is deployable (tests/test_registry.py tests a run that is not).
    "evaluate": {"baseline": "logistic", "baseline_c": 1.0, "margin_points": -100.0},
    # Generous gates: two-epoch tiny models are not what the thresholds are for; every variant's
    # path gets exercised. Rejection is tested on its own with the real thresholds.
    "compress": {
        "max_accuracy_drop": 100,
        "max_f1_drop": 100,
        "prune": {"finetune_epochs": 1, "round_to": 1},
        "sparse": {"enabled": True, "finetune_epochs": 1},
        "int8": {"calibration_images": 64, "min_top1_agreement": 0.5},
        "distill": {"epochs": 1, "student_width": 4},
    },
    "export": {"benchmark_calls": 20, "benchmark_batch": 8, "benchmark_batch_calls": 5},
    # The sandbox deployments include the hourly drift monitor: feedback added by a test must not make it
    # start a retraining run of its own in the middle of that test (tests/test_monitor.py sets its own).
    "monitor": {"min_feedback": 1_000_000},
}


# The tests of orchestration (DVC's semantics, Prefect runs, kills, schedules, tuning) need the whole DAG, not its
# compressed variants: every variant off, so compress and export handle the FP32 model alone. tests/test_compress.py
# (through tiny_run) covers every variant.
OFF = {"enabled": False}
FP32_ONLY = {"compress": {**TINY["compress"], "prune": OFF, "sparse": OFF, "int8": OFF, "distill": OFF}}

# The modules that take longest, longest first, with their seconds of one xdist worker in a fresh-clone `make test`
# (b426444, `make test` with `--durations=0`, summed per module). `make test` hands whole modules to two workers in
# collection order (`--no-loadscope-reorder`: xdist would otherwise start the modules with the most tests first,
# and the one-test 3-minute modules would run last, one worker idling); starting the longest first (after the
# shuffle, which still decides the order within this list's ties, of the other modules and of the tests in each)
# keeps one worker from running a 3-minute module alone at the end while the other idles.
LONGEST_FIRST = [
    "test_retrain",  # 186 s
    "test_tune",  # 167
    "test_schedules",  # 148
    "test_pipeline",  # 134
    "test_prefect",  # 133
    "test_faults",  # 96
    "test_pretrained",  # 88
    "test_text",  # 75
    "test_install",  # 32
    "test_prefect_cli",  # 31
    "test_data",  # 31
    "test_registry",  # 17
    "test_budget",  # 16
    "test_ingest",  # 14
    "test_soak",  # 14
    "test_serve",  # 13
    "test_compress",  # 11
    "test_serve_limits",  # 10
]


@pytest.hookimpl(trylast=True)  # after pytest-random-order's shuffle
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the shuffle stays inside a rank
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def bare_onnx_predictions(onnx_file: Path | str, prepared: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(labels, top-1) of an image model's ONNX file on a split, with none of lab2prod's scoring code: the shards'
    images run through a bare ONNX Runtime session as float NCHW in [0, 1] (the export's input contract)."""
    import onnxruntime as ort

    from lab2prod.data.dataset import SplitIndex

    index = SplitIndex.read(prepared, split)
    try:
        images, labels = index.images(np.arange(len(index.labels))), index.labels.copy()
    finally:
        index.close()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return labels, session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)


@pytest.fixture
def tiny_params() -> Params:
    return validate_params(TINY)


def digit_png(index: int, size: int = 8) -> Image.Image:
    img = load_digits().images[index]
    return Image.fromarray(np.rint(img * 255 / 16).astype(np.uint8), "L").resize((size, size))


def bomb_png() -> bytes:
    """A tiny, valid-looking PNG that claims 100000 x 100000 pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes of real digit PNGs (12 each, 24x24, one JPEG, one RGB) plus one broken file of each kind."""
    digits = load_digits()
    root = tmp_path / "images"
    for cls in (0, 1, 2):
        folder = root / f"digit_{cls}"
        folder.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(digits.target == cls)[:12]):
            img = digit_png(int(i), 24)
            if k == 0:
                img.convert("RGB").save(folder / f"{i}.jpg", quality=95)
            elif k == 1:
                img.convert("RGB").save(folder / f"{i}.png")
            else:
                img.save(folder / f"{i}.png")
    broken = root / "digit_0"
    good = next(broken.glob("*.png")).read_bytes()
    (broken / "truncated.png").write_bytes(good[: len(good) // 2])
    (broken / "notes.jpg").write_text("this is not an image\n")
    (broken / "empty.png").write_bytes(b"")
    (broken / "bomb.png").write_bytes(bomb_png())
    return root


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills once per test session, whichever xdist worker asks first (the others wait for it,
    then share it): what the session fixtures below build takes a minute, and each worker would build its own.
    What is built here is read, never changed, by the tests."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the parent: this session's, all workers'
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _every_stage(params: Params, ws: Workspace) -> None:
    """Every stage once, in DAG order, in-process."""
    from tasks.augment import augment
    from tasks.compress import compress
    from tasks.evaluate import evaluate
    from tasks.export import export
    from tasks.ingest import ingest
    from tasks.train import train

    ingest(params.ingest, ws.prepared)
    augment(params.augment, ws)
    train(params, ws)
    evaluate(params.evaluate, ws)
    compress(params, ws)
    export(params, ws)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny pass of every stage, in DAG order, in a temp dir; returns the paths it wrote."""
    d = built_once(tmp_path_factory, "run", lambda d: _every_stage(validate_params(TINY), Workspace.under(d)))
    ws = Workspace.under(d)
    return {
        "ws": ws,
        "prepared": ws.prepared,
        "augmented": ws.augmented,
        "train": ws.train_dir,
        "model": ws.model,
        "live": ws.train_metrics,
        "metrics": ws.evaluate_metrics,
        "csv": ws.predictions,
        "png": ws.confusion_png,
        "compressed": ws.compressed,
        "compress_metrics": ws.compress_metrics,
        "export": ws.exported,
        "onnx": ws.exported / "model.onnx",
        "export_metrics": ws.export_metrics,
        "benchmark": ws.benchmark,
    }


# The settings of `lean_repo`'s first run: FP32_ONLY, the feedback inbox on (as by default), and a learning rate
# that learns nothing, so that any model trained with the real one is known to beat it (tests/test_retrain.py
# starts from it as its first champion). A test that trains in a copy sets its own train settings.
LEAN_RUN = {**FP32_ONLY, "ingest": {"extra_sources": ["data/feedback"]}, "train": {"lr": 1e-06}}


@pytest.fixture(scope="session")
def lean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sandbox project (a git + DVC repo of this checkout, tests/sandbox.py) on LEAN_RUN settings, committed,
    whose whole DAG `dvc repro` has then run once (not committed): built once per session. DVC's own output of
    that run is in repro.out beside it. Read-only: tests take a copy (`lean_repo`)."""
    from tests.sandbox import commit, make_project, sh, write_params

    def build(d: Path) -> None:
        repo = make_project(d / "project")
        write_params(repo, LEAN_RUN)
        commit(repo, "lean compression")
        (d / "repro.out").write_text(sh(repo, "dvc", "repro").stdout)

    return built_once(tmp_path_factory, "lean_run", build)


@pytest.fixture
def lean_repo(lean_run: Path, tmp_path: Path) -> Path:
    """A copy of `lean_run`'s project (its git history, DVC cache, outputs and dvc.lock) in this test's tmp_path:
    a workspace where `dvc repro` has run once, for tests that need one to start from."""
    repo = tmp_path / "project"
    shutil.copytree(lean_run / "project", repo, symlinks=True)
    shutil.rmtree(repo / ".dvc/tmp", ignore_errors=True)  # DVC's state and locks: they name lean_run's paths
    return repo


TEXT_TINY = {
    **TINY,
    "ingest": {"extra_sources": [], "min_images_per_class": 3},
    "train": {"epochs": 12, "batch_size": 16, "lr": 0.01, "accelerator": "cpu"},
    "text": {"vocab_size": 500, "embed_dim": 16, "hidden": 16, "buckets": 4096},
    "export": {**TINY["export"], "benchmark_seconds": 1},
}


def text_params(source: Path, **ingest: Any) -> Params:
    raw = json.loads(json.dumps(TEXT_TINY))
    raw["ingest"] |= {"source": str(source), **ingest}
    return validate_params(raw)


@pytest.fixture(scope="session")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every stage once on a three-class text folder (40 texts a class, tests/text_corpus.py), in a temp
    workspace: the one text model the text, serving-loop and install tests share."""
    from tests.text_corpus import stdlib_texts, write_text_folder

    def build(d: Path) -> None:
        _every_stage(text_params(write_text_folder(d / "src", stdlib_texts(40))), Workspace.under(d))

    d = built_once(tmp_path_factory, "text_run", build)
    ws = Workspace.under(d)
    metrics = json.loads(ws.evaluate_metrics.read_text())
    params = text_params(d / "src")
    return {"ws": ws, "metrics": metrics, "params": params, "onnx": ws.exported / "model.onnx", "source": d / "src"}


@contextlib.contextmanager
def serving(
    model: Path, work: Path, sets: dict[str, Any], python: str = sys.executable, env: dict[str, str] | None = None
) -> Iterator[httpx.Client]:
    """`lab2prod serve --model MODEL` as a real process on a free loopback port (run by `python`, with `-S
    serve.KEY=VALUE` for each of `sets`), ready; a client of it. Stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [python, "-m", "lab2prod.cli.main", "serve", "--model", str(model), "--port", str(port)]
    cmd += [a for k, v in sets.items() for a in ("-S", f"serve.{k}={v}")]
    base = dict(os.environ) if python == sys.executable else {"PATH": "/usr/bin:/bin"}  # another venv: nothing of ours
    env = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.time() + 90
            while True:
                assert proc.poll() is None, (work / "server.log").read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline, "the server did not get ready: " + (work / "server.log").read_text()
                time.sleep(0.2)
            yield client
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
