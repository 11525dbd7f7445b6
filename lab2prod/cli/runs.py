"""`lab2prod runs`: the runs DVC keeps, side by side on what differs (lab2prod/core/experiments.py reads them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lab2prod.core.console import stage_entry

SHARES = ("acc", "f1", "precision", "recall", "agreement")  # figures that are shares of a split: shown in %


def _cell(value: Any, share: bool = False) -> str:
    """A table cell: a share (accuracy, F1, ...) in percent, any other number (a setting such as train.lr, a
    latency) with 4 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{100 * value:.2f} %" if share and 0 <= value <= 1 else f"{value:.4g}"
    return str(value)


def _is_share(key: str) -> bool:
    return any(word in key.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower() for word in SHARES)


@stage_entry
def runs(
    compare: Annotated[
        list[str] | None,
        typer.Option("--compare", help="Two runs (names or revs) side by side on what differs between them."),
    ] = None,
) -> None:
    """The workspace, its commit and every experiment (`lab2prod run -S`, `lab2prod tune`): only the settings
    that differ between them, and the headline figures of metrics/summary.json (validation and test accuracy,
    whether the model beats its baseline, the served file and its batch-1 latency). `--compare A --compare B`:
    every figure of the two runs' records that differs. `dvc exp apply NAME` brings one back."""
    from rich.console import Console
    from rich.table import Table

    from lab2prod.core.errors import ConfigError
    from lab2prod.core.experiments import HEADLINE, details, differing_params, find, read_runs

    found = read_runs(Path.cwd())
    console = Console()
    if compare:
        if len(compare) != 2:
            raise ConfigError(f"--compare takes two runs, got {len(compare)}: `--compare NAME --compare NAME`")
        a, b = (find(found, name) for name in compare)
        table = Table("setting or figure", a.name, b.name, title=f"{a.name} vs {b.name}")
        for key in differing_params([a, b]):
            table.add_row(key, _cell(a.params.get(key)), _cell(b.params.get(key)))
        figures_a, figures_b = a.metrics | details(Path.cwd(), a), b.metrics | details(Path.cwd(), b)
        for key in sorted(figures_a.keys() | figures_b.keys()):
            x, y = figures_a.get(key), figures_b.get(key)
            if x != y and isinstance(x if x is not None else y, int | float):
                share = _is_share(key)
                table.add_row(key.replace("metrics/", ""), _cell(x, share), _cell(y, share), style="cyan")
        console.print(table if table.row_count else f"{a.name} and {b.name}: the same settings and figures")
        return
    keys = differing_params(found)
    table = Table()
    table.add_column("run", no_wrap=True)  # the name `dvc exp apply` takes: never cut short
    for column in [*[k.split(".", 1)[-1] for k in keys], *[h[0] for h in HEADLINE], "served", "p50 ms"]:
        table.add_column(column)
    for run in found:
        cells = [_cell(run.params.get(k)) for k in keys]
        cells += [_cell(run.metrics.get(f"{path}:{key}"), _is_share(key)) for _, path, key in HEADLINE]
        latency = f"{run.latency_ms:.3f}" if run.latency_ms is not None else "–"
        table.add_row(run.name, *cells, (run.served or "–").removeprefix("onnx_"), latency)
    console.print(table)
    if not keys:
        console.print("no setting differs between these runs")
