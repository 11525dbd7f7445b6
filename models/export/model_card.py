"""The model card: what the exported model is for, what it was trained on, how good and fast it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab2prod.core.files import atomic_file
from lab2prod.core.settings import Params
from models.nets.model_file import ModelInfo

INT8_FASTER = "INT8 faster"
INT8_SLOWER = "INT8 slower: without VNNI/AMX instructions INT8 kernels rarely pay off"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def humanize(count: int | None) -> str:
    """7247114 -> "7.2 M", 5300 -> "5.3 k", 0 or None -> "–": counts a reader takes in at a glance."""
    if not count:
        return "–"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return str(count)


def _network_line(info: ModelInfo) -> str:
    spec, lineage = info.spec, info.lineage
    name = f"timm `{spec.architecture}`" if spec.is_timm else f"built-in `{spec.architecture}` (width {spec.width})"
    resize = f", resized to {spec.input_size} px ({spec.interpolation}) inside the model" if spec.input_size else ""
    if lineage.weights_source == "none":
        start = "trained from random initial weights"
    else:
        sha = f" (sha256 `{lineage.weights_sha256}`)" if lineage.weights_sha256 else ""
        start = f"initial weights from `{lineage.weights_source}`{sha}"
    return f"{name}{resize}; {start}; {info.epochs_trained} epochs."


def write_model_card(
    path: Path,
    info: ModelInfo,
    params: Params,
    evaluate: dict[str, Any],
    benchmark: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    machine, variants = benchmark["machine"], benchmark["variants"]
    default = benchmark["deployable_default"] or benchmark["fastest"]
    verdict = evaluate.get("verdict")
    if benchmark["deployable_default"]:
        headline = (
            f"**Deployable default: `{_file_of(default)}`** ({default}: the fastest accepted ONNX file at batch 1 "
            "on the machine below)."
        )
    else:
        headline = (
            f"**NOT DEPLOYABLE**: {benchmark['not_deployable']}. Fastest checked file: `{_file_of(default)}`; "
            "the registry keeps it, the gate does not promote it. More data, a longer run (`train.min_steps`) "
            "or a pretrained backbone (`train.pretrained`) are the usual remedies."
        )
    h, w, c = info.image_shape
    lines = [
        "# Model card",
        "",
        headline,
        "",
        "## Intended use",
        f"Image classification into {len(info.classes)} classes: {', '.join(info.classes)}. "
        f"Input: float32 `(batch, {c}, {h}, {w})` = pixel / 255, images resized to {h}x{w}"
        f"{' grayscale' if c == 1 else ' RGB'}; output: logits (argmax = class index into the list above). "
        "Normalisation is inside the model.",
        "Not for: images unlike the training data (other domains, sizes far from the training size, "
        "mirrored digits), or decisions with no human check where an error is costly.",
        "",
        "## Network",
        _network_line(info),
        "",
        "## Data",
        f"Source: `{meta['source']}`; {meta['n_images']} images after quarantine and de-duplication; "
        f"split train/val/test = {sum(meta['counts']['train'].values())}/{sum(meta['counts']['val'].values())}/"
        f"{sum(meta['counts']['test'].values())} (hash buckets, seed {params.ingest.seed}: images never change split); "
        f"quarantined: {meta['quarantined'] or 'none'}.",
        "",
        "## Quality on the test split",
        f"Accuracy {_pct(evaluate.get('accuracy'))}, macro F1 {_pct(evaluate.get('f1_macro'))}, "
        f"weighted F1 {_pct(evaluate.get('f1_weighted'))}"
        + (
            f"; {evaluate['baseline']['model']} baseline on raw pixels: {_pct(evaluate['baseline']['accuracy'])}."
            if "baseline" in evaluate
            else "."
        )
        + (f" Verdict: {verdict['line']}." if verdict else ""),
        "",
        "## Variants, side by side",
        f"Measured on: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
        f"flags {', '.join(machine['flags']) or 'none'}; "
        f"INT8 acceleration (VNNI/AMX): {'yes' if machine['int8_acceleration'] else 'no'}; "
        f"ONNX Runtime {machine['onnxruntime']}, torch {machine['torch']}. Latency over "
        f"{next(iter(variants.values()))['calls']} interleaved batch-1 calls per model.",
        "",
        "| model | file | accuracy | macro F1 | size | MACs | batch-1 p50 | batch-1 p95 | "
        f"batch-{params.export.benchmark_batch} images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tput = f"batch{params.export.benchmark_batch}_images_per_s"
    for name, v in variants.items():
        lines.append(
            f"| {name} | `{_file_of(name)}` | {_pct(v['accuracy'])} | {_pct(v['f1_macro'])} | "
            f"{v['bytes'] / 1024:.0f} KiB | {humanize(v['macs'])} | {v['batch1_p50_ms']:.3f} ms | "
            f"{v['batch1_p95_ms']:.3f} ms | {v[tput]:.0f} |"
        )
    if "onnx_int8" in variants:
        ratio = variants["onnx_fp32"]["batch1_p50_ms"] / variants["onnx_int8"]["batch1_p50_ms"]
        lines += [
            "",
            f"INT8 vs FP32 at batch 1 on this machine: {ratio:.2f}x ({INT8_FASTER if ratio > 1 else INT8_SLOWER}).",
        ]
    if benchmark["rejected"]:
        lines += ["", "Rejected by the compress stage (not exported):"]
        lines += [f"- {name}: {reason}" for name, reason in benchmark["rejected"].items()]
    lines += [
        "",
        "The run in one picture: [results.png](results.png) (training curves, test confusion, the served file's most "
        "confident mistakes, latency against accuracy of every file); as an offline page: [report.html](report.html).",
        "",
        "## Lineage",
        *(f"- {k}: `{v}`" if v is not None else f"- {k}: none" for k, v in info.lineage.model_dump().items()),
        "",
        "## Limits",
        "- Images are stretched to a square, not cropped: very elongated images lose shape.",
        "- Figures come from one held-out split of one dataset; expect less on data from elsewhere.",
        "- Speed figures hold for the machine above; re-run `dvc repro export` on the serving hardware.",
        "- The `sparse` variant has the same dense shapes as FP32: it is not smaller or faster with dense kernels.",
        "",
        "## Use",
        "```python",
        "import numpy as np, onnxruntime as ort",
        f"session = ort.InferenceSession('{_file_of(default)}')",
        f"x = np.zeros((1, {c}, {h}, {w}), np.float32)  # your images / 255",
        "class_index = session.run(None, {'pixels': x})[0].argmax(1)",
        "```",
    ]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _file_of(runner: str) -> str:
    if runner in ("pytorch_eager",):
        return "artifacts/train/model.pt"
    variant = runner.removeprefix("onnx_")
    return "model.onnx" if variant == "fp32" else f"model_{variant}.onnx"
