"""How time and memory grow with the data: ingest, augment, one training epoch and evaluate on synthetic
JPEG folders of several sizes, each stage its own process (`python -m tasks.<stage>`, as DVC runs it).

Per stage and size: wall time, images/s, peak RSS of the stage process and of its largest worker
process (ingest's decoders, the streaming loader's readers). Then the ratio of peak memory at the
largest size to the smallest, the prepared data's bytes against the source's, and the time of a
re-ingest after adding 1 % new files against the full ingest at the largest size.

    python -m benchmarks.scale --sizes 2000,8000,32000
    python -m benchmarks.scale --sizes 500,2000 --image-size 64     # a quick look
    python -m benchmarks.scale --sizes 32000 --stages ingest        # ingest and re-ingest only
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from benchmarks.synthetic import make_folder
from lab2prod.core.settings import apply_overrides, validate_params
from models.export.machine import describe_machine as hardware

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "augment", "train", "evaluate")
ADDED_FROM = 10_000_000  # index of the first image added for the re-ingest measurement
# Runs a stage module as `python -m` would, then reports the peak RSS of itself and of its children.
WRAPPER = """
import json, resource, runpy, sys
module, sys.argv = sys.argv[1], sys.argv[:1]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    if exit.code not in (None, 0):
        raise
usage = {"self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
         "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
print("RUSAGE " + json.dumps(usage), file=sys.stderr)
"""


def settings(source: Path, image_size: int) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = {
        "ingest.source": str(source),
        "ingest.extra_sources": [],
        "ingest.image_size": image_size,
        "ingest.channels": 3,
        "train.epochs": 1,
        "train.width": 8,
        "train.batch_size": 64,
        "train.accelerator": "cpu",
        "evaluate.baseline": "none",
    }
    merged = apply_overrides(raw, overrides)
    validate_params(merged)
    return merged


def run_stage(project: Path, stage: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, f"tasks.{stage}"], cwd=project, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed in {project}:\n{done.stderr[-3000:]}")
    usage = json.loads(done.stderr.rsplit("RUSAGE ", 1)[1].splitlines()[0])
    return {"seconds": seconds, "rss_mb": usage["self_kb"] / 1024, "worker_rss_mb": usage["children_kb"] / 1024}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(
    sizes: Annotated[str, typer.Option(help="Comma-separated image counts.")] = "2000,8000,32000",
    image_size: Annotated[int, typer.Option(help="Side of the images, px.")] = 224,
    work: Annotated[Path, typer.Option(help="Scratch folder (image folders are kept for reruns).")] = Path(
        "/tmp/lab2prod-scale"
    ),
    stages: Annotated[str, typer.Option(help="Comma-separated stages to run, in DAG order.")] = ",".join(STAGES),
) -> None:
    """Run ingest, augment, one training epoch and evaluate at each size; print time and memory."""
    counts = sorted(int(s) for s in sizes.split(","))
    chosen = [s for s in STAGES if s in stages.split(",")]
    rows: dict[int, dict[str, dict]] = {}
    source_bytes: dict[int, int] = {}
    for n in counts:
        images = work / f"images-{n}-{image_size}"
        if not (images / ".complete").exists():
            shutil.rmtree(images, ignore_errors=True)
            make_folder(images, n, image_size)
            (images / ".complete").touch()
        source_bytes[n] = folder_bytes(images) - 0
        project = work / f"project-{n}"
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
        (project / "params.yaml").write_text(yaml.safe_dump(settings(images, image_size), sort_keys=False))
        rows[n] = {}
        for stage in chosen:
            rows[n][stage] = run_stage(project, stage)
            print(f"  {n:>7} images  {stage:<9} {rows[n][stage]['seconds']:8.1f} s", file=sys.stderr)
        rows[n]["prepared_bytes"] = folder_bytes(project / "data/prepared")

    largest = counts[-1]
    images = work / f"images-{largest}-{image_size}"
    project = work / f"project-{largest}"
    added = max(1, largest // 100)
    make_folder(images, added, image_size, start=ADDED_FROM)  # new indices: new images
    again = run_stage(project, "ingest")
    for path in images.rglob("*.jpg"):  # back to the folder of its size, for the next run
        if int(path.stem) >= ADDED_FROM:
            path.unlink()

    print(f"hardware: {hardware()}")
    print(f"synthetic JPEG folders, {image_size}x{image_size} RGB, 10 classes; train: small_cnn width 8, batch 64")
    print("images  stage      wall s   images/s  peak RSS MB  worker peak RSS MB")
    for n in counts:
        for stage in chosen:
            r = rows[n][stage]
            print(
                f"{n:>6}  {stage:<9} {r['seconds']:>7.1f}  {n / r['seconds']:>9.0f}  {r['rss_mb']:>11.0f}"
                f"  {r['worker_rss_mb']:>18.0f}"
            )
    smallest = counts[0]
    print(f"peak RSS at {largest} / at {smallest} images (stage process; worker):")
    for stage in chosen:
        a, b = rows[largest][stage], rows[smallest][stage]
        print(f"  {stage:<9} {a['rss_mb'] / b['rss_mb']:.2f}x; {a['worker_rss_mb'] / max(b['worker_rss_mb'], 1):.2f}x")
    for n in counts:
        print(
            f"prepared data at {n}: {rows[n]['prepared_bytes'] / 2**20:.1f} MB = "
            f"{rows[n]['prepared_bytes'] / source_bytes[n]:.2f}x the source's {source_bytes[n] / 2**20:.1f} MB"
        )
    full = rows[largest]["ingest"]["seconds"]
    print(
        f"re-ingest after adding {added} new files (1 %) to {largest}: {again['seconds']:.1f} s = "
        f"{again['seconds'] / full:.2f}x the full ingest's {full:.1f} s"
    )


if __name__ == "__main__":
    typer.run(main)
