"""Stage 6, export: every deployable model as ONNX, checked against PyTorch, benchmarked, described.

Each ONNX file gets a dynamic batch axis, passes `onnx.checker` (full check) and must compute what its source
computes: FP32-derived files match their PyTorch model's logits within `export.atol + export.rtol x |logit|`
and top-1 at each of `export.parity_batch_sizes`; an INT8 file must agree with its FP32 parent's top-1 on
`compress.int8.min_top1_agreement` of the test split. Only variants compress accepted are exported; one that
misses its check is rejected with the reason (FP32 missing it fails the stage). Then PyTorch eager and every
ONNX file are benchmarked side by side. Text models: models/text/export.py (input "input_ids").

Writes (the directory is replaced atomically):
    artifacts/export/model.onnx            FP32; input "pixels": float32 (batch, C, H, W) = pixel / 255
    artifacts/export/model_<variant>.onnx  accepted variants (pruned, sparse, student, int8, pruned_int8, student_int8)
    artifacts/export/model_card.md         intended use, data, metrics, variants, speed, lineage, limits
    artifacts/export/results.png, report.html   the run in one picture (models/export/report.py)
    metrics/export.json, benchmark.json    parity per file; latency, throughput, size, accuracy per variant
    metrics/summary.json                   the run's headline figures, what `dvc exp show` shows (written last)
"""

from __future__ import annotations

import logging

from lab2prod.core.console import ParamsFile, run_stage
from lab2prod.core.errors import ParityError
from lab2prod.core.files import atomic_dir, read_json, write_json
from lab2prod.core.layout import PARAMS, WORKSPACE, Workspace
from lab2prod.core.records import CompressReport
from lab2prod.core.settings import Params, load_params
from lab2prod.core.summary import write_summary
from lab2prod.data.dataset import SplitBatches, pixels_input
from models.export.checks import export_checked, export_variant
from models.export.machine import cpu_features
from models.export.report import describe
from models.export.speed import SINGLES, measure, onnx_runner, torch_runner
from models.nets.model_file import load_model_file
from models.text.export import export_text

log = logging.getLogger("tasks.export")  # not __name__: that is __main__ under python -m


def export(params: Params, ws: Workspace = WORKSPACE) -> dict:
    """Export, check and benchmark every deployable model; files land only if every check passes."""
    text = read_json(ws.prepared / "meta.json").get("modality") == "text"
    result = export_text(params, ws) if text else export_images(params, ws)  # text: models/text/export.py
    write_summary(ws)  # from what the stages wrote, for DVC's tables
    return result


def export_images(params: Params, ws: Workspace) -> dict:
    cfg = params.export
    net, info = load_model_file(ws.model)
    x_test = SplitBatches(ws.prepared, "test")  # streamed: read from the shards at each pass
    if len(x_test) < max(cfg.parity_batch_sizes):
        need = max(cfg.parity_batch_sizes)
        raise ParityError(f"the test split has {len(x_test)} images; export.parity_batch_sizes needs {need}: lower")
    compress = CompressReport.read(ws.compress_metrics) if ws.compress_metrics.exists() else None
    accepted = compress.accepted if compress else {}

    with atomic_dir(ws.exported) as tmp:
        records = {"fp32": export_checked(net, info, tmp / "model.onnx", "fp32", params, x_test)}
        runners = {"pytorch_eager": torch_runner(net), "onnx_fp32": onnx_runner(tmp / "model.onnx")}
        missed: dict[str, str] = {}  # a variant that misses parity is rejected; only FP32 missing it fails export
        for name in accepted:
            target = tmp / f"model_{name}.onnx"
            try:
                records[name] = export_variant(name, ws, target, tmp / "model.onnx", params, x_test)
            except ParityError as exc:
                log.warning("export: %s REJECTED: %s", name, exc)
                missed[name] = f"export parity: {exc}"
                target.unlink(missing_ok=True)
                continue
            runners[f"onnx_{name}"] = onnx_runner(target)
        log.info("export: %d ONNX file(s) checked; benchmarking %s", len(records), ", ".join(runners))

        speed = measure(
            runners,
            pixels_input(x_test.first(max(SINGLES, cfg.benchmark_batch))),
            cfg.benchmark_calls,
            cfg.benchmark_batch,
            cfg.benchmark_batch_calls,
            budget_s=cfg.benchmark_seconds,
        )
        benchmark = {"machine": cpu_features(), "variants": {}}
        evaluate = read_json(ws.evaluate_metrics) if ws.evaluate_metrics.exists() else {}
        # FP32's scores: compress scored it beside its variants; without compress, evaluate's figures
        fp32_scores = compress.fp32.model_dump() if compress else evaluate
        for runner_name, figures in speed.items():
            variant = "fp32" if runner_name in ("pytorch_eager", "onnx_fp32") else runner_name.removeprefix("onnx_")
            scored = fp32_scores if variant == "fp32" else accepted[variant].model_dump()
            size = ws.model.stat().st_size if runner_name == "pytorch_eager" else records[variant]["onnx_bytes"]
            benchmark["variants"][runner_name] = {
                **figures,
                "bytes": size,
                **{k: scored.get(k) for k in ("accuracy", "f1_macro", "macs", "params")},
            }
        onnx_names = [n for n in benchmark["variants"] if n.startswith("onnx_")]
        default = min(onnx_names, key=lambda n: benchmark["variants"][n]["batch1_p50_ms"])
        verdict = evaluate.get("verdict") or {"passed": True}
        benchmark["fastest"] = default  # a model that does not beat the baseline is no deployable default
        benchmark["deployable_default"] = default if verdict["passed"] else None
        benchmark["not_deployable"] = None if verdict["passed"] else verdict["line"]
        benchmark["rejected"] = {**(compress.rejected if compress else {}), **missed}
        describe(tmp, ws, info, params, evaluate, benchmark, x_test)  # drift reference, card, results.png, html

    write_json(ws.export_metrics, {"opset": cfg.opset, "files": records})
    write_json(ws.benchmark, benchmark)
    chosen = f"deployable default: {default}" if verdict["passed"] else f"fastest: {default}; {verdict['line']}"
    e, f = (benchmark["variants"][n]["batch1_p50_ms"] for n in ("pytorch_eager", "onnx_fp32"))
    log.info("export: batch-1 p50 PyTorch eager %.3f ms, ONNX FP32 %.3f ms (%.1fx); %s", e, f, e / f, chosen)
    return {"files": records, "benchmark": benchmark}


def main(params: ParamsFile = PARAMS) -> None:
    """Export the trained model and accepted variants to artifacts/export/, checked and benchmarked (a file that
    does not match its source model fails the stage with exit code 1 and writes nothing)."""
    export(load_params(params))


if __name__ == "__main__":
    run_stage(main)
