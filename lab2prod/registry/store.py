"""The model registry: immutable versions with lineage, one champion pointer, promotion and rollback.

Layout (under `retrain.registry_dir`, default `registry/`):
    versions/v0001/                 an immutable copy of one pipeline run's deployable outputs:
        model.onnx, model_*.onnx    the exported ONNX files
        model.pt                    the weights-only PyTorch model
        model_card.md, *.json       evaluation, compression, export, benchmark metrics
        params.yaml, dvc.lock       the run's settings and content hashes (`dvc pull` restores its data)
        manifest.json               sha256 of every file above, the file to serve, lineage, parent version
    claims/v0001                    created exclusively before a version is written: two writers never pick
                                    the same number (a claim without a manifest is a run that died: skipped)
    pointers/00000001.json          one record per champion change {"version", "onnx", "onnx_sha256", "from",
                                    "since", "reason"}, created exclusively: the highest is the champion, so a
                                    change is a compare-and-swap (whoever creates number n+1 after reading n)
    champion.json                   a copy of the highest record, for readers that want one file
    history.jsonl                   one line per champion change: when, from, to, why (a copy of pointers/)

The `lab2prod registry` commands (list, show, promote, rollback) are this module's user interface.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from lab2prod.core.errors import RegistryError
from lab2prod.core.files import atomic_dir, atomic_file, read_json, sha256_file, write_json
from lab2prod.core.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.core.storage import resolve
from lab2prod.registry.backend import Store
from lab2prod.serve.runtime import variant_file

log = logging.getLogger("lab2prod.registry.store")

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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def location(project: Path, registry_dir: str) -> str:
    """`retrain.registry_dir` as a place: a URL as it is, a relative path from the project."""
    return resolve(registry_dir, project)


VERSION_NAME = re.compile(r"v\d{4,}")


def versions(registry: Path | str) -> list[str]:
    """Complete versions: a staging folder of a registration still in progress (or killed), `.v0007.<tmp>`, is
    not one even once its manifest is written inside it."""
    store = Store(registry)
    found = (p.rstrip("/").split("/")[-2] for p in store.fs.glob(store.path("versions", "*", "manifest.json")))
    return sorted(name for name in found if VERSION_NAME.fullmatch(name))


def manifest(registry: Path | str, version: str) -> dict[str, Any]:
    if not VERSION_NAME.fullmatch(version):
        raise RegistryError(f"{version!r} is not a version name (v0001, v0002, ...; `lab2prod registry list`)")
    store = Store(registry)
    if not store.exists("versions", version, "manifest.json"):
        raise RegistryError(f"no version {version!r} in {registry} (known: {', '.join(versions(registry)) or 'none'})")
    return store.read_json("versions", version, "manifest.json")


POINTERS = "pointers"


def _records(store: Store) -> list[str]:
    """Names of the champion records, oldest first."""
    found = store.fs.glob(store.path(POINTERS, "*.json"))
    return sorted(n for n in (p.rstrip("/").split("/")[-1] for p in found) if n[:-5].isdigit())


def _head(store: Store) -> tuple[int, dict[str, Any] | None]:
    """(number, record) of the current champion; (0, champion.json or None) for a registry from before records."""
    names = _records(store)
    if names:
        return int(names[-1][:-5]), store.read_json(POINTERS, names[-1])
    return 0, store.read_json("champion.json") if store.exists("champion.json") else None


def champion(registry: Path | str) -> dict[str, Any] | None:
    return _head(Store(registry))[1]


def champion_history(registry: Path | str) -> list[dict[str, Any]]:
    """Every champion change, oldest first."""
    store = Store(registry)
    names = _records(store)
    if not names and store.exists("history.jsonl"):  # a registry from before pointer records
        return _legacy_history(store)
    return [store.read_json(POINTERS, n) for n in names]


def _legacy_history(store: Store) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in store.fs.cat_file(store.path("history.jsonl")).decode().splitlines() if x]
    return [{"version": h["to"], "from": h.get("from"), "since": h["at"], "reason": h["reason"]} for h in lines]


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
    compression gates; for a run evaluate found not deployable, the fastest checked one), else model.onnx."""
    benchmark = read_json(benchmark_file) if benchmark_file.exists() else {}
    return variant_file(benchmark.get("deployable_default") or benchmark.get("fastest") or "onnx_fp32")


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


def _claim_version(store: Store, registry: Path | str) -> str:
    """The next free version name, claimed exclusively (concurrent writers get distinct, increasing names)."""
    claimed = [p.rstrip("/").split("/")[-1] for p in store.fs.glob(store.path("claims", "v*"))]
    numbers = [int(n[1:]) for n in [*versions(registry), *claimed] if n[1:].isdigit()]
    n = max(numbers, default=0) + 1
    while not store.create(json.dumps({"claimed": _now(), "pid": os.getpid()}).encode(), "claims", f"v{n:04d}"):
        n += 1  # another writer took it first
    return f"v{n:04d}"


def register(registry: Path | str, project: Path, lineage: dict[str, Any], parent: str | None) -> str:
    """Copy the workspace's deployable outputs into a new immutable version; returns its name."""
    ws = Workspace.under(project)
    export_dir = ws.exported
    if not (export_dir / "model.onnx").exists():
        raise RegistryError(f"{export_dir}/model.onnx is missing: run the pipeline before registering")
    deployable = deployable_name(ws.benchmark)
    if not (export_dir / deployable).exists():
        raise RegistryError(f"{export_dir / deployable} (metrics/benchmark.json's deployable default) is missing")
    store = Store(registry)
    name = _claim_version(store, registry)
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


class ChampionChanged(RegistryError):
    """The champion is not the one a decision was made against (another writer changed it meanwhile)."""


ANY = object()  # set_champion's `expect` default: whatever the champion is now


def set_champion(registry: Path | str, version: str, reason: str, expect: Any = ANY) -> dict[str, Any]:
    """Make `version` champion (after verifying its files), as a compare-and-swap.

    `expect` (a version name, or None for "no champion yet") makes it conditional: ChampionChanged if the
    champion is something else by the time the change is written. Concurrent changes are serialised by
    the exclusive creation of the next pointer record; the loser re-reads and tries again (or, with
    `expect`, stops).
    """
    verify(registry, version)
    store = Store(registry)
    m = manifest(registry, version)
    if not _records(store) and store.exists("history.jsonl"):
        _migrate(store)
    for _ in range(100):
        number, previous = _head(store)
        before = previous["version"] if previous else None
        if expect is not ANY and before != expect:
            raise ChampionChanged(
                f"the champion is {before or 'none'}, not {expect or 'none'}: another writer changed it; "
                f"{version} was not promoted"
            )
        pointer = {
            "version": version,
            "onnx": m["deployable"],
            "onnx_sha256": m["files"][m["deployable"]],
            "from": before,
            "since": _now(),
            "reason": reason,
        }
        if store.create((json.dumps(pointer, indent=2) + "\n").encode(), POINTERS, f"{number + 1:08d}.json"):
            break
    else:
        raise RegistryError(f"{registry}: could not write the champion pointer (100 concurrent changes in a row)")
    _mirror(store)
    log.info("registry: champion is now %s (%s)", version, reason)
    return pointer


def _migrate(store: Store) -> None:
    """A registry from before pointer records: its history.jsonl becomes records 1..n, the last one holding
    champion.json (so the champion and the rollback history carry over)."""
    lines = _legacy_history(store)
    current = store.read_json("champion.json") if store.exists("champion.json") else None
    for i, record in enumerate(lines, start=1):
        if i == len(lines) and current and current["version"] == record["version"]:
            record = {**current, **record}
        if not store.create((json.dumps(record, indent=2) + "\n").encode(), POINTERS, f"{i:08d}.json"):
            return  # another writer is migrating it


def _mirror(store: Store) -> None:
    """champion.json and history.jsonl from the pointer records (re-done if a later change lands meanwhile)."""
    for _ in range(10):
        number, head = _head(store)
        history = [store.read_json(POINTERS, n) for n in _records(store)]
        lines = "".join(
            json.dumps({"at": h["since"], "from": h.get("from"), "to": h["version"], "reason": h["reason"]}) + "\n"
            for h in history
        )
        if store.local:
            write_json(Path(store.path("champion.json")), head)
            with atomic_file(Path(store.path("history.jsonl"))) as tmp:
                tmp.write_text(lines)
        else:
            store.fs.pipe_file(store.path("champion.json"), (json.dumps(head, indent=2) + "\n").encode())
            store.fs.pipe_file(store.path("history.jsonl"), lines.encode())
        if _head(store)[0] == number:
            return


def rollback(registry: Path | str, to: str | None = None) -> dict[str, Any]:
    """Make `to` champion, or else the champion before the current one."""
    current = champion(registry)
    if to is None:
        if current is None:
            raise RegistryError("there is no champion to roll back from")
        earlier = [h["from"] for h in champion_history(registry) if h["version"] == current["version"] and h["from"]]
        if not earlier:
            raise RegistryError(f"{current['version']} has no earlier champion; name one with --to")
        to = earlier[-1]
    return set_champion(registry, to, f"rollback from {current and current['version']}")
