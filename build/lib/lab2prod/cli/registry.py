"""`lab2prod registry ...`: list versions, show one, promote by hand, roll back."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from lab2prod.core.console import stage_entry
from lab2prod.core.errors import RegistryError
from lab2prod.core.settings import load_params
from lab2prod.registry.store import champion, location, manifest, rollback, set_champion, versions

T = TypeVar("T")

app = typer.Typer(
    help="The model registry: versions, champion, promotion, rollback.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        help="Registry directory or URL, e.g. s3://bucket/registry (default: retrain.registry_dir in params.yaml)."
    ),
]


def registry_location(where: str | None) -> str:
    return where or location(Path.cwd(), load_params().retrain.registry_dir)


def _run(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except RegistryError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("list")
@stage_entry
def list_cmd(registry: RegistryOpt = None) -> None:
    """Every version with its key metrics; * marks the champion."""
    reg = registry_location(registry)
    current = (champion(reg) or {}).get("version")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", "version", "created (UTC)", "accuracy", "macro F1", "served file", "dataset", "parent"):
        table.add_column(column, no_wrap=True)
    for v in versions(reg):
        m = manifest(reg, v)
        ev = m["lineage"].get("metrics", {})
        table.add_row(
            "*" if v == current else "",
            v,
            m["created"][:16].replace("T", " "),
            f"{ev.get('accuracy', float('nan')):.4f}",
            f"{ev.get('f1_macro', float('nan')):.4f}",
            m["deployable"],
            str(m["lineage"].get("dataset_hash", ""))[:8],
            m["parent"] or "",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # piped: don't cut to 80 columns


@app.command()
@stage_entry
def show(version: str, registry: RegistryOpt = None) -> None:
    """A version's manifest: lineage, parent, files and their hashes."""
    Console().print_json(json.dumps(_run(manifest, registry_location(registry), version)))


@app.command()
@stage_entry
def promote(version: str, registry: RegistryOpt = None) -> None:
    """Make VERSION the champion by hand (its files are hash-checked first)."""
    pointer = _run(set_champion, registry_location(registry), version, "promoted by hand")
    Console().print(f"champion: {pointer['version']}")


@app.command("rollback")
@stage_entry
def rollback_cmd(
    to: Annotated[str | None, typer.Option(help="Version to make champion.")] = None, registry: RegistryOpt = None
) -> None:
    """Back to the previous champion, or to --to VERSION."""
    pointer = _run(rollback, registry_location(registry), to)
    Console().print(f"champion: {pointer['version']}")
