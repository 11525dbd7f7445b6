"""`lab2prod plots`: the real `dvc plots show` on this project's dvc.yaml, in a small DVC workspace holding the
files the stages write (training curves, predictions, PNGs), gives a page that loads nothing from the network
and whose every plot renders with the Vega-Lite it carries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import vl_convert
from PIL import Image

from lab2prod.core.dvc import dvc_command, dvc_env
from tests.conftest import ROOT

LOSS = [2.25, 1.5, 0.875, 0.5]


def cli(where: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**dvc_env(), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lab2prod.cli.main", *args]
    return subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dvc.yaml and the plot files its stages write, nothing run: `dvc plots show` reads the workspace."""
    ws = tmp_path_factory.mktemp("plots")
    shutil.copy2(ROOT / "dvc.yaml", ws / "dvc.yaml")
    subprocess.run(dvc_command("init", "--no-scm", "-q"), cwd=ws, env=dvc_env(), check=True)
    curves = ws / "metrics/train/plots/metrics"
    for split, name, values in (("train", "loss", LOSS), ("val", "loss", LOSS[::-1]), ("val", "acc", [0.5, 0.9])):
        (curves / split).mkdir(parents=True, exist_ok=True)
        rows = [f"{10 * (i + 1)}\t{v}" for i, v in enumerate(values)]
        (curves / split / f"{name}.tsv").write_text("\n".join(["step\t" + name, *rows]) + "\n")
    (ws / "metrics/evaluate").mkdir(parents=True)
    (ws / "metrics/evaluate/predictions.csv").write_text("actual,predicted\n0,0\n1,1\n1,0\n2,2\n")
    (ws / "plots").mkdir()
    for name in ("confusion_matrix", "augment_preview"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(ws / "plots" / f"{name}.png")
    return ws


def plot_specs(page: str) -> dict[str, dict]:
    """DVC's plot <div>s: `var spec = {...}; vegaEmbed('#id', spec);` -> {id: spec}."""
    found = re.findall(r"var spec = (.*?);\s*vegaEmbed\('#([^']+)', spec\);", page, re.S)
    return {plot_id: json.loads(spec) for spec, plot_id in found}


def test_plots_page_loads_nothing_from_the_network_and_every_plot_renders(workspace: Path) -> None:
    proc = cli(workspace, "plots", "-o", "offline")
    assert proc.returncode == 0, proc.stderr
    page_file = workspace / "offline/index.html"
    assert proc.stdout.strip() == str(page_file)
    page = page_file.read_text()
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    assert not re.search(r"""<(script|link|img)\b[^>]*\s(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    inline = [s for attrs, s in re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S) if "src" not in attrs]
    assert any("window.vegaEmbed=" in s for s in inline), "no inlined script defines vegaEmbed"
    assert page.index("window.vegaEmbed=") < page.index("vegaEmbed('#")  # defined before the plots call it

    specs = plot_specs(page)
    assert {"Training_curves", "Validation_accuracy", "Confusion_matrix__test_split_"} <= set(specs), list(specs)
    losses = {float(row["loss"]) for row in specs["Training_curves"]["data"]["values"]}
    assert losses == set(LOSS)  # the curves carry the workspace's numbers
    for plot_id, spec in specs.items():  # the same Vega-Lite as the inlined bundle draws each of them
        svg = vl_convert.vegalite_to_svg(spec)
        assert svg.startswith("<svg") and svg.count("<path") >= 2, plot_id
    images = re.findall(r'<img src="(static/[^"]+)"', page)
    assert images and all((page_file.parent / src).stat().st_size > 0 for src in images)


def test_plots_outside_a_project_says_where_to_run_it(tmp_path: Path) -> None:
    proc = cli(tmp_path, "plots")
    assert proc.returncode != 0 and "no dvc.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_dvc_plots_show_draws_each_plot_once(workspace: Path) -> None:
    """Every file behind a named plot of dvc.yaml is drawn by that plot only (a stage's plots: entry for the same
    file would add a second, unnamed drawing of it), and each picture appears once."""
    shown = json.loads(
        subprocess.run(
            dvc_command("plots", "show", "--json"), cwd=workspace, env=dvc_env(), capture_output=True, text=True
        ).stdout
    )["data"]
    named = {"Confusion matrix (test split)", "Training curves", "Validation accuracy"}
    assert set(shown) == named | {"plots/augment_preview.png", "plots/confusion_matrix.png"}, sorted(shown)
