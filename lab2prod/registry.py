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

The `lab2prod registry` commands (list, show, promote, rollback) are this module's user interface.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from lab2prod.errors import RegistryError
from lab2prod.files import atomic_dir, read_json, sha256_file, sha256_stream, write_json
from lab2prod.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.runtime import variant_file
from lab2prod.storage import is_remote, resolve

log = logging.getLogger("lab2prod.registry")

RUN_FILES = {  # what a version keeps besides the exported files: path in the workspace -> name in the version
    WORKSPACE.model: "model.pt",
    WORKSPACE.evaluate_metrics: "evaluate.json",
    WORKSPACE.compress_metrics: "compress.json",
    WORKSPACE.benchmark: "benchmark.json",
    WORKSPACE.export_metrics: "export.json",
    WORKSPACE.prepared / "meta.json": "data_meta.json",
    # The run's settings and DVC lock (the content hash of every input and output): with them,
    # `dvc pull` from the remote the run pushed to brings back this version's data and artifacts.
    PARAMS: "params.yaml",
    Path("dvc.lock"): "dvc.lock",
}


class Store:
    """Where a registry lives: a local directory, or any fsspec URL (s3://, gs://, az://, ...).

    Local: a version appears with one directory rename and its files are made read-only; the
    champion pointer is replaced with one rename. Object store: one object per file, manifest.json
    written last (a version without it does not exist), champion.json a single PUT (atomic on S3,
    GCS and Azure). Either way every file's sha256 is checked before a version becomes champion.
    """

    def __init__(self, location: str | Path) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(str(location))
        self.local = not is_remote(location)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        """A path for local registries, a full URL (with its protocol) for remote ones."""
        return self.path(*parts) if self.local else self.fs.unstrip_protocol(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.fs.cat_file(self.path(*parts)))

    def write_json(self, obj: Any, *parts: str) -> None:
        if self.local:
            write_json(Path(self.path(*parts)), obj)
        else:
            self.fs.pipe_file(self.path(*parts), (json.dumps(obj, indent=2) + "\n").encode())

    def append_line(self, line: str, *parts: str) -> None:
        if self.local:
            with open(self.path(*parts), "a") as fh:
                fh.write(line + "\n")
        else:  # objects cannot be appended to: rewrite (one writer at a time: the workspace lock)
            old = self.fs.cat_file(self.path(*parts)) if self.exists(*parts) else b""
            self.fs.pipe_file(self.path(*parts), old + (line + "\n").encode())

    def sha256(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "rb") as fh:
            return sha256_stream(fh)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def location(project: Path, registry_dir: str) -> str:
    """`retrain.registry_dir` as a place: a URL as it is, a relative path from the project."""
    return resolve(registry_dir, project)


def versions(registry: Path | str) -> list[str]:
    store = Store(registry)
    return sorted(p.rstrip("/").split("/")[-2] for p in store.fs.glob(store.path("versions", "*", "manifest.json")))


def manifest(registry: Path | str, version: str) -> dict[str, Any]:
    store = Store(registry)
    if not store.exists("versions", version, "manifest.json"):
        raise RegistryError(f"no version {version!r} in {registry} (known: {', '.join(versions(registry)) or 'none'})")
    return store.read_json("versions", version, "manifest.json")


def champion(registry: Path | str) -> dict[str, Any] | None:
    store = Store(registry)
    return store.read_json("champion.json") if store.exists("champion.json") else None


def champion_model(registry: Path | str) -> str | None:
    """The ONNX file to serve (a path, or a URL for a remote registry): the one the champion pointer
    names, inside its immutable version. `fsspec.open(...)` reads either."""
    current = champion(registry)
    return Store(registry).url("versions", current["version"], current["onnx"]) if current else None


def local_copy(registry: Path | str, version: str, file: str, scratch: Path) -> Path:
    """A local path to one file of a version: the file itself, or a download into `scratch`."""
    store = Store(registry)
    if store.local:
        return Path(store.path("versions", version, file))
    scratch.mkdir(parents=True, exist_ok=True)
    store.fs.get_file(store.path("versions", version, file), str(scratch / file))
    return scratch / file


def deployable_name(benchmark_file: Path) -> str:
    """The ONNX file a run would serve: export's deployable default (the fastest variant that passed the
    compression gates), else the FP32 model.onnx."""
    benchmark = read_json(benchmark_file) if benchmark_file.exists() else {}
    return variant_file(benchmark.get("deployable_default", "onnx_fp32"))


def _stage_version(
    tmp: Path, project: Path, name: str, parent: str | None, deployable: str, lineage: dict[str, Any]
) -> None:
    """Fill `tmp` with a version's files and its manifest (their sha256, lineage, parent)."""
    for src in sorted((project / WORKSPACE.exported).glob("*")):
        if src.is_file():
            shutil.copy2(src, tmp / src.name)
    for rel, target in RUN_FILES.items():
        if (project / rel).exists():
            shutil.copy2(project / rel, tmp / target)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    write_json(
        tmp / "manifest.json",
        {
            "version": name,
            "created": _now(),
            "parent": parent,
            "deployable": deployable,
            "lineage": lineage,
            "files": files,
        },
    )


def register(registry: Path | str, project: Path, lineage: dict[str, Any], parent: str | None) -> str:
    """Copy the workspace's deployable outputs into a new immutable version; returns its name."""
    ws = Workspace.under(project)
    export_dir = ws.exported
    if not (export_dir / "model.onnx").exists():
        raise RegistryError(f"{export_dir}/model.onnx is missing: run the pipeline before registering")
    deployable = deployable_name(ws.benchmark)
    if not (export_dir / deployable).exists():
        raise RegistryError(f"{export_dir / deployable} (metrics/benchmark.json's deployable default) is missing")
    existing = versions(registry)
    name = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
    store = Store(registry)
    if store.local:
        with atomic_dir(Path(store.path("versions", name))) as tmp:
            _stage_version(tmp, project, name, parent, deployable, lineage)
            for p in tmp.iterdir():  # immutable: read-only files
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            tmp = Path(scratch)
            _stage_version(tmp, project, name, parent, deployable, lineage)
            for p in sorted(tmp.iterdir(), key=lambda p: p.name == "manifest.json"):  # the manifest last
                store.fs.put_file(str(p), store.path("versions", name, p.name))
    log.info("registry: registered %s (parent %s)", name, parent)
    return name


def verify(registry: Path | str, version: str) -> None:
    """Every file of a version still has the hash recorded when it was registered."""
    store = Store(registry)
    for file, digest in manifest(registry, version)["files"].items():
        where = store.url("versions", version, file)
        if not store.exists("versions", version, file) or store.sha256("versions", version, file) != digest:
            raise RegistryError(f"{where} does not match its recorded sha256: the version was modified")


def set_champion(registry: Path | str, version: str, reason: str) -> dict[str, Any]:
    """Point the champion at `version` in one atomic step (after verifying its files)."""
    verify(registry, version)
    store = Store(registry)
    previous = champion(registry)
    m = manifest(registry, version)
    pointer = {
        "version": version,
        "onnx": m["deployable"],
        "onnx_sha256": m["files"][m["deployable"]],
        "since": _now(),
        "reason": reason,
    }
    store.write_json(pointer, "champion.json")
    store.append_line(
        json.dumps({"at": pointer["since"], "from": previous and previous["version"], "to": version, "reason": reason}),
        "history.jsonl",
    )
    log.info("registry: champion is now %s (%s)", version, reason)
    return pointer


def rollback(registry: Path | str, to: str | None = None) -> dict[str, Any]:
    """Make `to` champion, or else the champion before the current one."""
    current = champion(registry)
    if to is None:
        if current is None:
            raise RegistryError("there is no champion to roll back from")
        store = Store(registry)
        history = [
            json.loads(line) for line in store.fs.cat_file(store.path("history.jsonl")).decode().splitlines() if line
        ]
        earlier = [h["from"] for h in history if h["to"] == current["version"] and h["from"]]
        if not earlier:
            raise RegistryError(f"{current['version']} has no earlier champion; name one with --to")
        to = earlier[-1]
    return set_champion(registry, to, f"rollback from {current and current['version']}")
