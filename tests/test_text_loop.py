"""The text side of the serve -> monitor -> retrain loop, on the shared tiny text model (conftest `text_run`):
a labelled text posted to a real served text model lands in the inbox and in the next ingest's shards, the
drift monitor scores text length, unknown-token rate and confidence from the prediction log, and the
micro-batcher pads merged texts per length group without changing any text's answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from lab2prod.core.settings import validate_params
from lab2prod.data.text import read_texts
from lab2prod.monitor import drift
from lab2prod.serve.batch import MicroBatcher
from lab2prod.serve.metrics import Metrics
from lab2prod.serve.model import ServedModel
from lab2prod.serve.predict import Classifier
from lab2prod.serve.prediction_log import PredictionLog, read_log
from tests.conftest import serving, text_params
from tests.text_corpus import stdlib_texts

TOKEN = "a-test-token-of-32-characters-xx"


def unseen_texts() -> list[str]:
    """In-distribution texts the tiny model never saw (conftest's text_run trains on the first 40 a class)."""
    return [t for texts in stdlib_texts(400).values() for t in texts[40:]]


def far_texts(n: int) -> list[str]:
    """Texts from elsewhere: long random strings and Cyrillic / Greek / CJK sentences."""
    rng = random.Random(0)
    scripts = ["абвгдежзиклмнопрстуфхцчшщыэюя", "αβγδεζηθικλμνξοπρστυφχψω", "的一是不了人在有我他这中大来上国个到说们"]
    out = []
    for i in range(n):
        if i % 2:
            out.append(" ".join("".join(rng.choices("qxzjkvw0123456789", k=rng.randint(8, 20))) for _ in range(30)))
        else:
            alphabet = scripts[i % 3]
            out.append(
                " ".join("".join(rng.choices(alphabet, k=rng.randint(3, 9))) for _ in range(rng.randint(20, 40)))
            )
    return out


def through_the_batcher(
    model: Classifier, texts: list[str], version: str, log_dir: Path | None
) -> tuple[list[np.ndarray], MicroBatcher]:
    """Each text as its own request, all concurrent, through the server's micro-batcher (and its prediction
    log when `log_dir`); the probabilities each request got, and the batcher (for its calls)."""
    served = ServedModel(model, version, "ab" * 32, "now")
    plog = PredictionLog(log_dir, 1.0, 10, 100, False) if log_dir else None

    async def scenario() -> tuple[list[np.ndarray], MicroBatcher]:
        batcher = MicroBatcher(64, 0.05, 10_000, Metrics(), plog, 3)
        runner = asyncio.create_task(batcher.run())
        batcher.arriving = len(texts)  # every request on its way in: the first waits for the others

        async def one(i: int) -> np.ndarray:
            await asyncio.sleep(0)
            batcher.arriving -= 1
            return await batcher.submit(served, np.asarray([texts[i]], dtype=object), [f"t{i}"], None)

        out = await asyncio.gather(*(one(i) for i in range(len(texts))))
        runner.cancel()
        batcher.executor.shutdown()
        return out, batcher

    out, batcher = asyncio.run(scenario())
    if plog is not None:
        plog.close()
    return out, batcher


def test_a_text_correction_posted_to_the_server_is_in_the_next_ingest_with_its_label(text_run, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    corrected = stdlib_texts(60)["email"][50]  # not in the training folder (the first 40 a class)
    auth = {"authorization": f"Bearer {TOKEN}"}
    sets = {"feedback_dir": inbox, "log_dir": tmp_path / "logs"}
    with serving(text_run["onnx"], tmp_path, sets, env={"LAB2PROD_TOKEN": TOKEN}) as client:
        no_token = client.post("/feedback", json={"text": corrected, "label": "asyncio"})
        stored = client.post("/feedback", json={"text": f"  {corrected}\n", "label": "asyncio"}, headers=auth)
        again = client.post("/feedback", json={"text": corrected, "label": "asyncio"}, headers=auth)
        bad = {
            "not one of the model's classes": client.post(
                "/feedback", json={"text": "x", "label": "json"}, headers=auth
            ),
            "cannot be a class folder name": client.post(
                "/feedback", json={"text": "x", "label": "../e"}, headers=auth
            ),
            "missing or not a string: label": client.post("/feedback", json={"text": "x"}, headers=auth),
            "text: empty": client.post("/feedback", json={"text": " \n", "label": "email"}, headers=auth),
            "text: too_long": client.post("/feedback", json={"text": "a" * 20_001, "label": "email"}, headers=auth),
            "not a JSON object": client.post("/feedback", json=["x", "email"], headers=auth),
        }
        image_form = client.post(
            "/feedback", files={"image": ("x.png", b"\x89PNG")}, data={"label": "email"}, headers=auth
        )
    assert no_token.status_code == 401 and "Bearer" in no_token.json()["detail"]
    assert stored.status_code == 201, stored.text
    digest = hashlib.sha256(corrected.encode("utf-8")).hexdigest()
    assert Path(stored.json()["path"]) == inbox / "asyncio" / f"{digest[:20]}.txt"
    assert (inbox / "asyncio" / f"{digest[:20]}.txt").read_text(encoding="utf-8") == corrected  # stripped, UTF-8
    assert again.status_code == 200 and again.json()["new"] is False
    for words, answer in bad.items():
        assert answer.status_code == 422 and words in answer.json()["detail"], (words, answer.text)
    assert image_form.status_code == 415 and '{"text"' in image_form.json()["detail"]
    assert [p.relative_to(inbox).as_posix() for p in inbox.rglob("*.txt")] == [f"asyncio/{digest[:20]}.txt"]

    from tasks.ingest import ingest

    params = text_params(text_run["source"], extra_sources=[str(inbox)])
    ingest(params.ingest, tmp_path / "prepared")
    classes = json.loads((tmp_path / "prepared/meta.json").read_text())["classes"]
    found = []
    for split in ("train", "val", "test"):
        texts, labels = read_texts(tmp_path / "prepared", split)
        found += [(split, classes[y]) for t, y in zip(texts, labels, strict=True) if t == corrected]
    assert len(found) == 1 and found[0][1] == "asyncio", found


def test_drift_of_text_traffic_is_scored_on_length_unknown_tokens_and_confidence(text_run, tmp_path) -> None:
    ws = text_run["ws"]
    model = Classifier.load(str(text_run["onnx"]))
    # export's reference: per test text, what the tokenizer (used here directly) makes of it
    exported = json.loads((ws.exported / "reference.json").read_text())
    tokenizer = Tokenizer.from_file(str(ws.exported / "tokenizer.json"))
    tokenizer.enable_truncation(text_run["params"].text.max_length)
    test_texts, _ = read_texts(ws.prepared, "test")
    encodings = [tokenizer.encode(t).tokens for t in test_texts]
    assert exported["modality"] == "text" and exported["n"] == len(test_texts)
    assert exported["tokens"] == [len(e) for e in encodings]
    assert exported["unknown_rate"] == pytest.approx([e.count("[UNK]") / len(e) for e in encodings], abs=1e-6)
    assert len(exported["confidence"]) == len(test_texts) and set(exported["class_mix"]) <= set(model.classes)

    # a reference of ~240 unseen in-distribution texts, live traffic of ~240 others through the batcher's log
    texts = unseen_texts()
    ref_texts, live_texts = texts[::2], texts[1::2]
    ref = drift.text_reference(ref_texts, model.predict(ref_texts), model.encoder, model.classes)
    through_the_batcher(model, live_texts, "v1", tmp_path / "same")
    rows = list(read_log(tmp_path / "same"))
    assert len(rows) == len(live_texts) and {"tokens", "unknown_rate", "chars"} <= set(rows[0])
    same = drift.compare(ref, rows, 0.2, 50)
    assert same["enough"] and not same["drift"], same
    assert set(same["features"]) == {"confidence", "tokens", "unknown_rate", "class_mix"}

    through_the_batcher(model, far_texts(120), "v1", tmp_path / "far")
    far = drift.compare(ref, list(read_log(tmp_path / "far")), 0.2, 50)
    assert far["drift"] and {"tokens", "unknown_rate"} <= set(far["drifted"]), far
    assert far["features"]["unknown_rate"]["live_median"] > 0.3 > same["features"]["unknown_rate"]["live_median"]
    drift.plot(ref, rows, same, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"


def test_lab2prod_monitor_flags_drift_of_a_text_champion_and_counts_text_feedback(text_run, tmp_path) -> None:
    """The whole check (`lab2prod monitor`): the registered text champion's own reference.json, the log, the inbox."""
    from lab2prod.monitor.check import check
    from lab2prod.registry.store import register, set_champion

    registry = tmp_path / "registry"
    version = register(registry, text_run["ws"].prepared.parent.parent, {"note": "test"}, None)
    set_champion(registry, version, "test")
    (tmp_path / "inbox/email").mkdir(parents=True)
    (tmp_path / "inbox/email/0123.txt").write_text("a correction")
    through_the_batcher(Classifier.load(str(text_run["onnx"])), far_texts(60), version, tmp_path / "logs")
    params = validate_params(
        {
            "retrain": {"registry_dir": str(registry)},
            "serve": {"log_dir": str(tmp_path / "logs"), "feedback_dir": str(tmp_path / "inbox")},
            "monitor": {"min_predictions": 20, "min_feedback": 1, "report_dir": str(tmp_path / "report")},
        }
    )
    report = check(params, tmp_path)
    assert report["champion"] == version and report["drift"]["n_live"] == 60
    assert report["drift"]["drift"] and "unknown_rate" in report["drift"]["drifted"], report["drift"]
    assert report["feedback"]["new"] == 1 and report["retrain"]["needed"]
    assert (tmp_path / "report/drift.png").is_file()


def test_merged_texts_are_padded_per_length_group_and_answered_as_alone(text_run) -> None:
    model = Classifier.load(str(text_run["onnx"]))
    test_texts, _ = read_texts(text_run["ws"].prepared, "test")
    long = [" ".join(test_texts[i : i + 12]) for i in range(0, 24, 6)]  # a few texts of many tokens (up to the cut)
    texts = test_texts[:36] + long
    out, batcher = through_the_batcher(model, texts, "v1", None)
    for text, got in zip(texts, out, strict=True):
        alone = model.predict([text])
        assert got.argmax(1) == alone.argmax(1)
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)

    lengths = [len(i) for i in model.encoder.ids(texts)]
    calls = list(batcher.text_calls)
    assert sum(n for n, _, _ in calls) == len(texts) and sum(real for *_, real in calls) == sum(lengths)
    batches = batcher.metrics.batch.collect()[0].samples
    merged = next(s.value for s in batches if s.name.endswith("_count"))
    assert merged < len(texts) / 4 and len(calls) > merged  # requests merged, then split by length
    padded = sum(n * length for n, length, _ in calls)
    assert padded <= 1.25 * sum(lengths)  # each group pads at most 25 % over its real tokens
    assert len(texts) * max(lengths) > 2 * padded  # padding all to the longest would cost more than twice that


def test_feedback_cli_takes_text_files(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from lab2prod.cli.main import app
    from tests.conftest import ROOT

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project-root command
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.txt").write_text("\ufeffRun the event loop until it is stopped.\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    inbox = tmp_path / "inbox"
    ok = CliRunner().invoke(app, ["feedback", "add", "good.txt", "--label", "asyncio", "--inbox", str(inbox)])
    assert ok.exit_code == 0, ok.output
    digest = hashlib.sha256(b"Run the event loop until it is stopped.").hexdigest()
    assert (inbox / "asyncio" / f"{digest[:20]}.txt").read_bytes() == b"Run the event loop until it is stopped."
    bad = CliRunner().invoke(app, ["feedback", "add", "latin1.txt", "--label", "asyncio", "--inbox", str(inbox)])
    assert bad.exit_code != 0 and "latin1.txt: text: not_utf8" in bad.output
    assert [p.name for p in inbox.rglob("*") if p.is_file()] == [f"{digest[:20]}.txt"]
