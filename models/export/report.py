"""A run in one picture and one offline page, written by export beside the model card:

results.png   training curves (loss, validation accuracy), the test confusion matrix, the served model's
              most confident mistakes on the test split (the images, or the texts of a text model, with
              true -> predicted and the probability), and every exported file's batch-1 latency against its
              test accuracy
report.html   the same picture embedded (no file or network fetched), the verdict, the variants and the
              mistakes as tables
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from lab2prod.core.files import read_json, write_json  # noqa: E402
from lab2prod.core.layout import Workspace  # noqa: E402
from lab2prod.core.settings import Params  # noqa: E402
from lab2prod.data.dataset import SplitBatches, array_batches, pixels_input  # noqa: E402
from lab2prod.monitor import drift  # noqa: E402
from lab2prod.serve.runtime import logits, session, variant_file  # noqa: E402
from models.export.checks import drift_reference  # noqa: E402
from models.export.model_card import write_model_card  # noqa: E402
from models.nets.model_file import ModelInfo  # noqa: E402

MISTAKES = 8  # the most confident wrong answers shown


def _curve(folder: Path, split: str, name: str) -> tuple[list[int], list[float]]:
    path = folder / "plots" / "metrics" / split / f"{name}.tsv"
    if not path.is_file():
        return [], []
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    return [int(r["step"]) for r in rows], [float(r[name]) for r in rows]


def confident_mistakes(z: np.ndarray, labels: np.ndarray, n: int = MISTAKES) -> list[dict[str, Any]]:
    """The most confident wrong answers among logits `z` (one row per test item): position, true and predicted
    class index, the probability given."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    predicted = p.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-p[wrong, predicted[wrong]])][:n]
    return [
        {"position": int(i), "true": int(labels[i]), "predicted": int(predicted[i]), "p": float(p[i].max())}
        for i in order
    ]


def worst_mistakes(onnx_file: Path, x_test: SplitBatches, n: int = MISTAKES) -> list[dict[str, Any]]:
    """The served image file's most confident wrong answers on the test split."""
    sess = session(onnx_file)
    z = np.concatenate([logits(sess, pixels_input(x)) for x in array_batches(x_test)])
    return confident_mistakes(z, x_test.labels, n)


def describe(
    out_dir: Path, ws: Workspace, info: ModelInfo, params: Params, evaluate: dict, benchmark: dict, x_test: SplitBatches
) -> None:
    """Beside the exported files: the drift reference of the file served by default (the fastest), the model
    card, results.png and report.html."""
    served = benchmark["fastest"]
    write_json(out_dir / drift.REFERENCE_FILE, drift_reference(out_dir / variant_file(served), x_test, info.classes))
    verdict = (evaluate.get("verdict") or {}).get("line", "")
    mistakes = worst_mistakes(out_dir / variant_file(served), x_test)
    images = x_test.images([m["position"] for m in mistakes]) if mistakes else []
    write_report(out_dir, ws, served, info.classes, benchmark, verdict, mistakes, images=list(images))
    write_model_card(out_dir / "model_card.md", info, params, evaluate, benchmark, read_json(ws.prepared / "meta.json"))


def write_report(
    out_dir: Path,
    ws: Workspace,
    served: str,
    classes: list[str],
    benchmark: dict,
    verdict: str,
    mistakes: list[dict[str, Any]],
    images: list[np.ndarray] | None = None,
    texts: list[str] | None = None,
) -> None:
    """results.png and report.html in `out_dir` for the file `served` (a benchmark runner name), showing its
    `mistakes` (confident_mistakes) as `images` or as `texts` (one per mistake, in order)."""
    fig = plt.figure(figsize=(14, 9), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    curves = fig.add_subplot(grid[0, 0])
    for split, style in (("train", "-"), ("val", "--")):
        steps, values = _curve(ws.train_metrics, split, "loss")
        curves.plot(steps, values, style, label=f"{split} loss")
    steps, values = _curve(ws.train_metrics, "val", "acc")
    twin = curves.twinx()
    twin.plot(steps, values, color="tab:green", label="val accuracy")
    twin.set_ylim(0, 1.01)
    twin.set_ylabel("validation accuracy", color="tab:green")
    curves.set(title="training", xlabel="optimizer step", ylabel="loss")
    curves.legend(loc="center right")
    ax = fig.add_subplot(grid[0, 1])
    rows = list(csv.DictReader(ws.predictions.open())) if ws.predictions.is_file() else []
    cm = confusion_matrix([r["actual"] for r in rows], [r["predicted"] for r in rows], labels=classes)
    ax.imshow(cm, cmap="Blues")
    ax.set(title="test confusion (rows: true)", xticks=range(len(classes)), yticks=range(len(classes)))
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    speed = fig.add_subplot(grid[0, 2])
    for name, v in benchmark["variants"].items():
        if v.get("accuracy") is not None:
            speed.scatter(v["batch1_p50_ms"], 100 * v["accuracy"], s=40)
            speed.annotate(name.removeprefix("onnx_"), (v["batch1_p50_ms"], 100 * v["accuracy"]), fontsize=8)
    speed.set(title="exported files", xlabel="batch-1 p50 (ms)", ylabel="test accuracy (%)")
    bottom = fig.add_subfigure(grid[1, :])
    bottom.suptitle(f"the served file's most confident mistakes on the test split ({len(mistakes)} shown)")
    if texts is not None:  # a text model: one line per mistake
        cell = bottom.subplots()
        cell.axis("off")
        lines = [
            f"{classes[m['true']]} -> {classes[m['predicted']]} ({m['p']:.0%}): " + _short(t, 110)
            for m, t in zip(mistakes, texts, strict=True)
        ]
        cell.text(0, 1, "\n".join(lines) or "no mistake on the test split", va="top", fontsize=9, family="monospace")
    else:
        for k, cell in enumerate(bottom.subplots(1, MISTAKES)):
            cell.axis("off")
            if k == 0 and not mistakes:
                cell.text(0, 0.5, "no mistake on the test split", fontsize=11)
            if k < len(mistakes):
                m, img = mistakes[k], (images or [])[k]
                cell.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
                cell.set_title(f"{classes[m['true']]} -> {classes[m['predicted']]}\n{m['p']:.0%}", fontsize=9)
    acc = benchmark["variants"][served].get("accuracy")
    shown = f"served by default: {served.removeprefix('onnx_')}" + (f" ({100 * acc:.2f} % test)" if acc else "")
    fig.suptitle(f"{shown}.  Trained model: {verdict}")
    fig.savefig(out_dir / "results.png", dpi=90)
    plt.close(fig)
    _write_html(out_dir, served, verdict, benchmark, mistakes, classes, texts)


def _short(text: str, n: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _write_html(
    out_dir: Path, served: str, verdict: str, benchmark: dict, mistakes: list, classes: list, texts: list | None
) -> None:
    png = base64.b64encode((out_dir / "results.png").read_bytes()).decode()
    variants = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_pct(v.get('accuracy'))}</td><td>{v['batch1_p50_ms']:.3f} ms</td>"
        f"<td>{v['bytes'] / 1024:.0f} KiB</td></tr>"
        for n, v in benchmark["variants"].items()
    )
    wrong = "".join(
        f"<tr><td>{m['position']}</td><td>{html.escape(classes[m['true']])}</td>"
        f"<td>{html.escape(classes[m['predicted']])}</td><td>{m['p']:.1%}</td>"
        + (f"<td>{html.escape(_short(texts[k], 400))}</td>" if texts is not None else "")
        + "</tr>"
        for k, m in enumerate(mistakes)
    )
    item = "test text" if texts is not None else "test image"
    text_column = "<th>text</th>" if texts is not None else ""
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>lab2prod run: {html.escape(served)}</title>
<style>body{{font-family:sans-serif;max-width:1280px;margin:auto}}td,th{{padding:2px 10px;text-align:left}}</style>
</head><body><h1>Served file: {html.escape(served)}</h1><p>{html.escape(verdict)}</p>
<img alt="results" style="max-width:100%" src="data:image/png;base64,{png}">
<h2>Exported files</h2><table><tr><th>file</th><th>test accuracy</th><th>batch-1 p50</th><th>size</th></tr>
{variants}</table>
<h2>Most confident mistakes (test split)</h2><table id="mistakes"><tr><th>{item}</th><th>true</th>
<th>predicted</th><th>probability</th>{text_column}</tr>{wrong}</table></body></html>
"""
    (out_dir / "report.html").write_text(page)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"
