"""Test accuracy of the default pipeline over several seeds, beside the scikit-learn baseline.

Each seed re-splits the data (ingest.seed), re-augments (augment.seed) and re-trains (train.seed)
with everything else from params.yaml, then scores the network and the baseline on that seed's test
split. Prints mean +- sd (n = seeds) for both and the per-seed figures.

    python -m benchmarks.accuracy_seeds --seeds 3
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.core.console import setup_logging
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import load_params
from models.export.machine import describe_machine as hardware
from tasks.augment import augment
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.train import train


def one_seed(seed: int, params_file: Path, work: Path) -> dict:
    params = load_params(params_file, {"ingest.seed": seed, "augment.seed": seed, "train.seed": seed})
    ws = Workspace.under(work / f"seed{seed}")
    start = time.perf_counter()
    ingest(params.ingest, ws.prepared)
    augment(params.augment, ws)
    train(params, ws)
    m = evaluate(params.evaluate, ws)
    return {
        "seed": seed,
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "baseline_accuracy": m["baseline"]["accuracy"],
        "n_test": m["n_test"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(
    seeds: Annotated[int, typer.Option(help="How many seeds (0..N-1).")] = 3,
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path(
        "benchmarks/results/accuracy_seeds.json"
    ),
) -> None:
    """Mean +- sd test accuracy of the network vs the baseline over seeds."""
    setup_logging(logging.WARNING)
    load_params(params)  # fail fast on bad settings
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_seed(s, params, Path(tmp)) for s in range(seeds)]
    baseline_name = load_params(params).evaluate.baseline

    def stats(key: str) -> tuple[float, float]:
        values = [100 * r[key] for r in rows]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    print(f"hardware: {hardware()}")
    print(f"settings: {params} with ingest/augment/train seed = 0..{seeds - 1}; n = {seeds}; ", end="")
    print(f"test images per seed: {rows[0]['n_test']}")
    print(f"{'seed':>4}  {'network acc %':>13}  {'macro F1 %':>10}  {baseline_name + ' acc %':>12}  {'seconds':>7}")
    for r in rows:
        acc, f1, base = 100 * r["accuracy"], 100 * r["f1_macro"], 100 * r["baseline_accuracy"]
        print(f"{r['seed']:>4}  {acc:>13.2f}  {f1:>10.2f}  {base:>12.2f}  {r['seconds']:>7}")
    (net_m, net_s), (base_m, base_s) = stats("accuracy"), stats("baseline_accuracy")
    print(f"network:  {net_m:.2f} +- {net_s:.2f} % test accuracy (mean +- sd, n={seeds})")
    print(f"baseline: {base_m:.2f} +- {base_s:.2f} % ({baseline_name} on raw pixels, same splits)")
    ahead = sum(r["accuracy"] > r["baseline_accuracy"] for r in rows)
    print(f"network - baseline: {net_m - base_m:+.2f} points; network ahead on {ahead}/{seeds} seeds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "hardware": hardware(),
                "seeds": rows,
                "network": {"mean": net_m, "sd": net_s},
                "baseline": {"mean": base_m, "sd": base_s},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    typer.run(main)
