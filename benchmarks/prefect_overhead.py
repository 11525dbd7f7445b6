"""The same pipeline through Prefect and through plain `dvc repro`: wall time, ratio, per-task overhead.

Clones this project's committed code into a throwaway git + DVC repo, starts a Prefect server on loopback (SQLite, its
own home), then alternates, n times: clear the outputs and dvc.lock, run `dvc repro`; clear again,
run the flow (`python -m flows.pipeline`, reporting to that server). Both therefore run every stage.
Prints each pair, the medians, the ratio Prefect / DVC, and the overhead per stage task.

    python -m benchmarks.prefect_overhead --runs 3 --settings tiny
    python -m benchmarks.prefect_overhead --runs 2 --settings default --warmup 0
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
import yaml

from lab2prod.core.dvc import dvc_env
from lab2prod.core.settings import apply_overrides, validate_params
from models.export.machine import describe_machine as hardware

ROOT = Path(__file__).resolve().parents[1]
# 'tiny': every stage runs, each in seconds (8x8 images, 2 epochs, narrow nets, short benchmarks).
TINY = {
    "ingest.image_size": 8,
    "ingest.extra_sources": [],
    "augment.offline_copies": 0,
    "train.width": 8,
    "train.epochs": 2,
    "train.batch_size": 256,
    "train.accelerator": "cpu",
    "evaluate.baseline": "logistic",
    "compress.max_accuracy_drop": 100,
    "compress.max_f1_drop": 100,
    "compress.prune.finetune_epochs": 1,
    "compress.sparse.finetune_epochs": 1,
    "compress.int8.calibration_images": 64,
    "compress.int8.min_top1_agreement": 0.5,
    "compress.distill.epochs": 1,
    "compress.distill.student_width": 4,
    "export.benchmark_calls": 20,
    "export.benchmark_batch": 8,
    "export.benchmark_batch_calls": 5,
}


def make_project(where: Path, settings: str) -> Path:
    """A clone of this repository's HEAD with `settings` written out in full (DVC tracks keys, not defaults)."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where)], check=True)
    raw = yaml.safe_load((where / "params.yaml").read_text())
    params = validate_params(apply_overrides(raw, TINY) if settings == "tiny" else raw)
    (where / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return where


OUTPUTS = ("data", "artifacts", "metrics", "plots", "dvc.lock")


def clear(repo: Path) -> None:
    for name in OUTPUTS:
        path = repo / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def timed(cmd: list[str], repo: Path, env: dict[str, str]) -> float:
    clear(repo)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def main(
    runs: Annotated[int, typer.Option(help="Counted pairs.")] = 3,
    settings: Annotated[str, typer.Option(help="'tiny' (test settings) or 'default' (params.yaml).")] = "tiny",
    port: Annotated[int, typer.Option(help="Loopback port for the benchmark's Prefect server.")] = 4297,
    warmup: Annotated[int, typer.Option(help="Uncounted pairs first.")] = 1,
) -> None:
    """Wall time of the whole DAG via Prefect vs via dvc repro, alternating."""
    if settings not in ("tiny", "default"):
        raise typer.BadParameter("settings must be 'tiny' or 'default'")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = make_project(root / "project", settings)
        prefect = {
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
        env = {**dvc_env(), "PYTHONPATH": str(repo), **prefect}
        server = subprocess.Popen(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            dvc_cmd, flow_cmd = ["dvc", "repro"], ["python", "-m", "flows.pipeline"]
            for _ in range(warmup):
                timed(dvc_cmd, repo, env), timed(flow_cmd, repo, env)
            pairs = [(timed(flow_cmd, repo, env), timed(dvc_cmd, repo, env)) for _ in range(runs)]
        finally:
            server.terminate()
            server.wait(timeout=30)

    n_stages = len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    flows_s, dvc_s = [p[0] for p in pairs], [p[1] for p in pairs]
    ratios = [a / b for a, b in pairs]
    print(f"hardware: {hardware()}")
    print(f"pipeline: {n_stages} stages, {settings} settings, every stage run each time; ", end="")
    print(f"n = {runs} pairs after {warmup} warm-up pair(s)")
    print("run  prefect s  dvc repro s  ratio")
    for i, (a, b) in enumerate(pairs):
        print(f"{i:>3}  {a:>9.2f}  {b:>11.2f}  {a / b:>5.3f}")
    overhead = statistics.median(a - b for a, b in pairs)
    print(
        f"median: prefect {statistics.median(flows_s):.2f} s, dvc repro {statistics.median(dvc_s):.2f} s, "
        f"ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(
        f"Prefect adds {overhead:.2f} s per run: {overhead / n_stages:.2f} s per stage task "
        "(flow start-up, task state round trips, one `dvc` process per stage)"
    )


if __name__ == "__main__":
    typer.run(main)
