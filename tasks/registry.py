"""The model registry: immutable versions with lineage, one champion pointer, promotion and rollback.

Layout (under `retrain.registry_dir`, default `registry/`):
    versions/v0001/                 an immutable copy of one pipeline run's deployable outputs:
        model.onnx, model_*.onnx    the exported ONNX files
        model.pt                    the weights-only PyTorch model
        model_card.md, *.json       evaluation, compression, export, benchmark metrics
        params.yaml, dvc.lock       the run's settings and content hashes (`dvc pull` restores its data)
        manifest.json               sha256 of every file above, the file to serve, lineage, parent version
    champion.json                   {"version", "onnx" (the file to serve), "onnx_sha256"}: one atomic rename
    history.jsonl                   one line per champion change: when, from, to, why

    python -m tasks.registry list                 versions with their key metrics; * marks the champion
    python -m tasks.registry show v0003           one version's lineage and files
    python -m tasks.registry promote v0003        make a version champion by hand
    python -m tasks.registry rollback [--to v0002]  back to the previous champion (or the one named)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import stat
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tasks.artifacts import atomic_dir, read_json, write_json
from tasks.config import load_params

log = logging.getLogger("tasks.registry")

REGISTRY = Path("registry")
RUN_FILES = {  # what a version keeps: path in the workspace -> name in the version
    "artifacts/train/model.pt": "model.pt",
    "metrics/evaluate.json": "evaluate.json",
    "metrics/compress.json": "compress.json",
    "metrics/benchmark.json": "benchmark.json",
    "metrics/export.json": "export.json",
    "data/prepared/meta.json": "data_meta.json",
    # The run's settings and DVC lock (the content hash of every input and output): with them,
    # `dvc pull` from the remote the run pushed to brings back this version's data and artifacts.
    "params.yaml": "params.yaml",
    "dvc.lock": "dvc.lock",
}


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says what is missing or wrong."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def versions(registry: Path) -> list[str]:
    root = registry / "versions"
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").exists()) if root.exists() else []


def manifest(registry: Path, version: str) -> dict[str, Any]:
    path = registry / "versions" / version / "manifest.json"
    if not path.exists():
        raise RegistryError(f"no version {version!r} in {registry} (known: {', '.join(versions(registry)) or 'none'})")
    return read_json(path)


def champion(registry: Path) -> dict[str, Any] | None:
    path = registry / "champion.json"
    return read_json(path) if path.exists() else None


def champion_model(registry: Path) -> Path | None:
    """The ONNX file to serve: the one the champion pointer names, inside its immutable version."""
    current = champion(registry)
    return registry / "versions" / current["version"] / current["onnx"] if current else None


def deployable_name(benchmark_file: Path) -> str:
    """The ONNX file a run would serve: export's deployable default (the fastest variant that passed the
    compression gates), else the FP32 model.onnx."""
    benchmark = read_json(benchmark_file) if benchmark_file.exists() else {}
    default = benchmark.get("deployable_default", "onnx_fp32")
    return "model.onnx" if default == "onnx_fp32" else f"model_{default.removeprefix('onnx_')}.onnx"


def register(registry: Path, project: Path, lineage: dict[str, Any], parent: str | None) -> str:
    """Copy the workspace's deployable outputs into a new immutable version; returns its name."""
    export_dir = project / "artifacts/export"
    if not (export_dir / "model.onnx").exists():
        raise RegistryError(f"{export_dir}/model.onnx is missing: run the pipeline before registering")
    deployable = deployable_name(project / "metrics/benchmark.json")
    if not (export_dir / deployable).exists():
        raise RegistryError(f"{export_dir / deployable} (metrics/benchmark.json's deployable default) is missing")
    existing = versions(registry)
    name = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
    (registry / "versions").mkdir(parents=True, exist_ok=True)
    with atomic_dir(registry / "versions" / name) as tmp:
        for src in sorted(export_dir.glob("*")):
            if src.is_file():
                shutil.copy2(src, tmp / src.name)
        for rel, target in RUN_FILES.items():
            if (project / rel).exists():
                shutil.copy2(project / rel, tmp / target)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
        write_json(tmp / "manifest.json", {"version": name, "created": _now(), "parent": parent,
                                           "deployable": deployable, "lineage": lineage, "files": files})
        for p in tmp.iterdir():  # immutable: read-only files
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    log.info("registry: registered %s (parent %s)", name, parent)
    return name


def verify(registry: Path, version: str) -> None:
    """Every file of a version still has the hash recorded when it was registered."""
    m = manifest(registry, version)
    for file, digest in m["files"].items():
        path = registry / "versions" / version / file
        if not path.exists() or sha256(path) != digest:
            raise RegistryError(f"{path} does not match its recorded sha256: the version was modified")


def set_champion(registry: Path, version: str, reason: str) -> dict[str, Any]:
    """Point the champion at `version` in one atomic step (after verifying its files)."""
    verify(registry, version)
    previous = champion(registry)
    m = manifest(registry, version)
    pointer = {"version": version, "onnx": m["deployable"], "onnx_sha256": m["files"][m["deployable"]],
               "since": _now(), "reason": reason}
    write_json(registry / "champion.json", pointer)
    with (registry / "history.jsonl").open("a") as fh:
        fh.write(json.dumps({"at": pointer["since"], "from": previous and previous["version"], "to": version,
                             "reason": reason}) + "\n")
    log.info("registry: champion is now %s (%s)", version, reason)
    return pointer


def rollback(registry: Path, to: str | None = None) -> dict[str, Any]:
    """Make `to` champion, or else the champion before the current one."""
    current = champion(registry)
    if to is None:
        if current is None:
            raise RegistryError("there is no champion to roll back from")
        history = [json.loads(line) for line in (registry / "history.jsonl").read_text().splitlines() if line]
        earlier = [h["from"] for h in history if h["to"] == current["version"] and h["from"]]
        if not earlier:
            raise RegistryError(f"{current['version']} has no earlier champion; name one with --to")
        to = earlier[-1]
    return set_champion(registry, to, f"rollback from {current and current['version']}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

app = typer.Typer(help="The lab2prod model registry: versions, champion, promotion, rollback.",
                  no_args_is_help=True, add_completion=False)
RegistryOpt = Annotated[Path | None, typer.Option(help="Registry directory (default: retrain.registry_dir).")]


def _registry(path: Path | None) -> Path:
    return path or Path(load_params().retrain.registry_dir)


def _run(fn, *args):
    try:
        return fn(*args)
    except RegistryError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("list")
def list_cmd(registry: RegistryOpt = None) -> None:
    """Every version with its key metrics; * marks the champion."""
    reg = _registry(registry)
    current = (champion(reg) or {}).get("version")
    table = Table("", "version", "created", "accuracy", "macro F1", "served file", "dataset", "parent")
    for v in versions(reg):
        m = manifest(reg, v)
        ev = m["lineage"].get("metrics", {})
        table.add_row("*" if v == current else "", v, m["created"], f"{ev.get('accuracy', float('nan')):.4f}",
                      f"{ev.get('f1_macro', float('nan')):.4f}", m["deployable"],
                      str(m["lineage"].get("dataset_hash", ""))[:12],
                      m["parent"] or "")
    Console().print(table)


@app.command()
def show(version: str, registry: RegistryOpt = None) -> None:
    """A version's manifest: lineage, parent, files and their hashes."""
    Console().print_json(json.dumps(_run(manifest, _registry(registry), version)))


@app.command()
def promote(version: str, registry: RegistryOpt = None) -> None:
    """Make VERSION the champion by hand."""
    pointer = _run(set_champion, _registry(registry), version, "promoted by hand")
    Console().print(f"champion: {pointer['version']}")


@app.command("rollback")
def rollback_cmd(to: Annotated[str | None, typer.Option(help="Version to make champion.")] = None,
                 registry: RegistryOpt = None) -> None:
    """Back to the previous champion, or to --to VERSION."""
    pointer = _run(rollback, _registry(registry), to)
    Console().print(f"champion: {pointer['version']}")


if __name__ == "__main__":
    app()
