"""Export of a text model: ONNX with dynamic batch and length axes, its tokenizer in the file's metadata and
beside it (tokenizer.json), checked (onnx full check, parity with PyTorch at two batch sizes and two lengths,
top-1 agreement on the whole test split), benchmarked at batch 1 and batch N on 64-token inputs, described
in a model card, with the drift reference of the default file (reference.json: confidence, tokens and
unknown-token rate per test text; lab2prod/monitor/drift.py). tasks/export.py runs it when the prepared data is text."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lab2prod.core.errors import ParityError
from lab2prod.core.files import atomic_dir, read_json, write_json
from lab2prod.core.layout import Workspace
from lab2prod.core.records import CompressReport
from lab2prod.core.settings import Params
from lab2prod.data.text import read_texts
from lab2prod.data.tokens import TextEncoder
from lab2prod.monitor import drift
from lab2prod.serve.runtime import OUTPUT, session
from models.export.machine import cpu_features
from models.export.onnx_export import export_graph, write_metadata
from models.export.report import confident_mistakes, write_report
from models.export.speed import measure, onnx_runner, torch_runner
from models.text.encoder import EncoderBody
from models.text.model_file import TextModelInfo, load_text_model
from models.text.scoring import text_logits

log = logging.getLogger("models.text.export")

TEXT_INPUT = "input_ids"
BENCH_TOKENS = 64  # the benchmark's input length


def to_text_onnx(net: torch.nn.Module, path: Path, opset: int, exporter: str = "auto") -> None:
    """Export with dynamic batch and length axes. "auto" (export.exporter) traces a transformer encoder with the
    TorchScript exporter (MiniLM: 2 s against 17 s through torch.export, the same logits at every length, and
    a graph ONNX Runtime's transformer optimizer can fuse) and exports the MLP, whose n-gram code branches on the
    input's length, through torch.export, which keeps that branch symbolic."""
    if exporter == "auto":
        exporter = "torchscript" if any(isinstance(m, EncoderBody) for m in net.modules()) else "dynamo"
    example = torch.randint(2, 50, (2, 16), dtype=torch.int64)
    export_graph(net, example, path, opset, TEXT_INPUT, {0: "batch", 1: "length"}, exporter)


def add_text_metadata(path: Path, info: TextModelInfo, variant: str) -> None:
    """What predict and serve need to read a text as training did: classes, the tokenizer, the length cut."""
    props = {
        "modality": "text",
        "classes": json.dumps(info.classes),
        "tokenizer": info.tokenizer,
        "tokenizer_file": "tokenizer.json",
        "max_length": str(info.max_length),
        "input": info.input,
        "variant": variant,
    }
    write_metadata(path, props, info.lineage)


def text_parity(net: torch.nn.Module, path: Path, ids: np.ndarray, params: Params) -> dict[str, float]:
    """Max |logit difference| ONNX Runtime vs PyTorch at each parity batch size, cut to 8 tokens and at full
    length; ParityError beyond atol + rtol x |logit| or where the top-1 class differs."""
    cfg, sess, diffs = params.export, session(path), {}
    for bs in cfg.parity_batch_sizes:
        for length in sorted({min(8, ids.shape[1]), ids.shape[1]}):
            x = np.ascontiguousarray(ids[:bs, :length])
            with torch.inference_mode():
                expected = net(torch.from_numpy(x)).numpy()
            got = sess.run([OUTPUT], {TEXT_INPUT: x})[0]
            diff = np.abs(got - expected)
            where = f"batch {bs}, {length} tokens"
            diffs[where] = float(diff.max())
            if float((diff - cfg.rtol * np.abs(expected)).max()) > cfg.atol:
                raise ParityError(f"{where}: max |ONNX - PyTorch| = {diff.max():.2e} > export.atol + rtol x |logit|")
            if (got.argmax(1) != expected.argmax(1)).any():
                raise ParityError(f"{where}: ONNX's top-1 class differs from PyTorch's")
    return diffs


def onnx_text_logits(path: Path, encoder: TextEncoder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    sess = session(path)
    out = [
        sess.run([OUTPUT], {TEXT_INPUT: encoder(texts[i : i + batch_size])})[0]
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(out)


def bench_inputs(encoder: TextEncoder, texts: list[str], n: int) -> np.ndarray:
    """`n` test texts as exactly BENCH_TOKENS tokens each (their tokens repeated to that length)."""
    rows = [
        (ids * (BENCH_TOKENS // max(1, len(ids)) + 1))[:BENCH_TOKENS] or [encoder.pad_id]
        for ids in encoder.ids(texts[:n])
    ]
    return np.asarray([r + [r[-1]] * (BENCH_TOKENS - len(r)) for r in rows], np.int64)


def export_text(params: Params, ws: Workspace) -> dict[str, Any]:
    cfg = params.export
    net, info = load_text_model(ws.model)
    texts, labels = read_texts(ws.prepared, "test")
    if len(texts) < max(cfg.parity_batch_sizes):
        raise ParityError(
            f"the test split has {len(texts)} texts; export.parity_batch_sizes needs {max(cfg.parity_batch_sizes)}"
        )
    encoder = TextEncoder(info.tokenizer, info.max_length)
    evaluate = read_json(ws.evaluate_metrics) if ws.evaluate_metrics.exists() else {}
    with atomic_dir(ws.exported) as tmp:
        path = tmp / "model.onnx"
        to_text_onnx(net, path, cfg.opset, cfg.exporter)
        add_text_metadata(path, info, "fp32")
        onnx.checker.check_model(str(path), full_check=True)
        (tmp / "tokenizer.json").write_text(info.tokenizer)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # the longest first: parity at full length
        longest = encoder([texts[i] for i in order[: max(cfg.parity_batch_sizes)]])  # every FP32-kind file's parity
        diffs = text_parity(net, path, longest, params)
        onnx_logits = onnx_text_logits(path, encoder, texts)
        agreement = float((onnx_logits.argmax(1) == text_logits(net, encoder, texts).argmax(1)).mean())
        record = {"file": path.name, "max_abs_logit_diff": diffs, "atol": cfg.atol, "rtol": cfg.rtol}
        record |= {"test_top1_agreement": agreement, "onnx_bytes": path.stat().st_size}
        records, runners = {"fp32": record}, {"pytorch_eager": torch_runner(net), "onnx_fp32": onnx_runner(path)}
        served_logits = {"onnx_fp32": onnx_logits}
        compress = CompressReport.read(ws.compress_metrics) if ws.compress_metrics.exists() else None
        accepted = compress.accepted if compress else {}
        rejected = dict(compress.rejected) if compress else {}
        if "int8" in accepted:  # compress's dynamic INT8 file, with the metadata and checked against FP32
            target = tmp / "model_int8.onnx"
            shutil.copyfile(ws.compressed / "int8.onnx", target)
            add_text_metadata(target, info, "int8")
            onnx.checker.check_model(str(target), full_check=True)
            served_logits["onnx_int8"] = onnx_text_logits(target, encoder, texts)
            agree = float((served_logits["onnx_int8"].argmax(1) == onnx_logits.argmax(1)).mean())
            if agree < params.text.int8_min_top1_agreement:
                rejected["int8"] = f"export: top-1 agreement with FP32 {agree:.4f} < text.int8_min_top1_agreement"
                target.unlink()
            else:
                records["int8"] = {"file": target.name, "test_top1_agreement_with_fp32": agree}
                records["int8"]["onnx_bytes"] = target.stat().st_size
                runners["onnx_int8"] = onnx_runner(target)
        if "student" in accepted:  # the distilled shallower encoder: its own ONNX file, checked as FP32 is
            student, student_info = load_text_model(ws.compressed / "student.pt")
            target = tmp / "model_student.onnx"
            to_text_onnx(student, target, cfg.opset, cfg.exporter)
            add_text_metadata(target, student_info, "student")
            onnx.checker.check_model(str(target), full_check=True)
            try:
                student_diffs = text_parity(student, target, longest, params)
            except ParityError as exc:
                rejected["student"] = f"export parity: {exc}"
                target.unlink()
            else:
                records["student"] = {"file": target.name, "max_abs_logit_diff": student_diffs}
                records["student"]["onnx_bytes"] = target.stat().st_size
                runners["onnx_student"] = onnx_runner(target)
                served_logits["onnx_student"] = onnx_text_logits(target, encoder, texts)
        x = bench_inputs(encoder, texts, max(cfg.benchmark_batch, 16))
        budget = cfg.benchmark_seconds
        speed = measure(
            runners, x, cfg.benchmark_calls, cfg.benchmark_batch, cfg.benchmark_batch_calls, budget_s=budget
        )
        sizes = {"pytorch_eager": ws.model.stat().st_size} | {f"onnx_{k}": r["onnx_bytes"] for k, r in records.items()}
        params_n = sum(p.numel() for p in net.parameters())
        scores = {k: evaluate.get(k) for k in ("accuracy", "f1_macro")}
        benchmark = {"machine": cpu_features(), "input_tokens": BENCH_TOKENS, "variants": {}}
        for name, figures in speed.items():
            variant = name.removeprefix("onnx_")
            scored = accepted[variant].model_dump() if variant in accepted else {**scores, "params": params_n}
            picked = {k: scored.get(k) for k in ("accuracy", "f1_macro", "params")}
            benchmark["variants"][name] = {**figures, "bytes": sizes[name], **picked}
        fastest = min((n for n in speed if n.startswith("onnx_")), key=lambda n: speed[n]["batch1_p50_ms"])
        verdict = evaluate.get("verdict") or {"passed": True}
        benchmark |= {"fastest": fastest, "deployable_default": fastest if verdict["passed"] else None}
        benchmark |= {"not_deployable": None if verdict["passed"] else verdict["line"], "rejected": rejected}
        z = served_logits[fastest]  # the drift reference of the file served by default, as the image export's
        probs = np.exp(z - z.max(1, keepdims=True))
        reference = drift.text_reference(texts, probs / probs.sum(1, keepdims=True), encoder, info.classes)
        write_json(tmp / drift.REFERENCE_FILE, reference)
        mistakes = confident_mistakes(z, np.asarray(labels))  # results.png, report.html: as an image run's
        shown = [texts[m["position"]] for m in mistakes]
        write_report(tmp, ws, fastest, info.classes, benchmark, verdict.get("line", ""), mistakes, texts=shown)
        write_text_card(tmp / "model_card.md", info, evaluate, benchmark, record)
    write_json(ws.export_metrics, {"opset": cfg.opset, "files": records})
    write_json(ws.benchmark, benchmark)
    e, f = (benchmark["variants"][n]["batch1_p50_ms"] for n in ("pytorch_eager", "onnx_fp32"))
    log.info(
        "export: text model; batch-1 p50 (64 tokens) PyTorch eager %.3f ms, ONNX FP32 %.3f ms; top-1 agreement %.4f",
        e,
        f,
        agreement,
    )
    return {"files": records, "benchmark": benchmark}


def write_text_card(path: Path, info: TextModelInfo, evaluate: dict, benchmark: dict, record: dict) -> None:
    spec, verdict = info.spec, evaluate.get("verdict") or {}
    params_n = benchmark["variants"]["onnx_fp32"]["params"]
    acc, base = evaluate.get("accuracy"), (evaluate.get("baseline") or {}).get("accuracy")
    if spec.architecture == "encoder":
        layers = (spec.encoder_config or {}).get("num_hidden_layers")
        network = f"pretrained transformer encoder ({layers} layers, hidden {spec.embed_dim}), mean-pooled, linear head"
    else:
        network = (
            f"bag of token {spec.ngrams}-grams ({spec.vocab_size} WordPiece tokens + {spec.buckets} hashed "
            f"n-gram buckets, {spec.embed_dim}-d) -> MLP ({spec.hidden} hidden)"
        )
    speeds = ", ".join(f"{n} {v['batch1_p50_ms']:.3f} ms" for n, v in benchmark["variants"].items())
    lines = [
        f"# Text classifier: {len(info.classes)} classes"
        + ("" if verdict.get("passed", True) else " -- NOT DEPLOYABLE"),
        "",
        *([f"**{verdict['line']}**", ""] if verdict.get("line") else []),
        f"- Network: {network}; {params_n:,} parameters",
        "- Input: a text, tokenized with the tokenizer inside the ONNX file (also tokenizer.json), cut at "
        f"{info.max_length} tokens",
        f"- Classes: {', '.join(info.classes)}",
        f"- Test accuracy: {acc * 100:.2f} %" if acc is not None else "- Test accuracy: not evaluated",
        f"- Baseline (TF-IDF + logistic regression, same split): {base * 100:.2f} %" if base is not None else "",
        f"- ONNX file: {record['onnx_bytes'] / 2**20:.2f} MB; top-1 agreement with PyTorch on the test split "
        f"{record['test_top1_agreement']:.4f}",
        f"- Latency, batch 1 p50 ({benchmark['input_tokens']} tokens): {speeds}",
        f"- Deployable default: {benchmark['deployable_default']}",
        *[f"- Rejected {name}: {why}" for name, why in benchmark["rejected"].items()],
        "- The run in one picture: [results.png](results.png) (curves, confusion, the served file's most confident "
        "mistakes, latency against accuracy), and as a page: [report.html](report.html)",
        f"- Lineage: dataset {info.lineage.dataset_hash[:12]}, commit {info.lineage.git_commit}",
        "",
    ]
    path.write_text("\n".join(line for line in lines if line is not None))
