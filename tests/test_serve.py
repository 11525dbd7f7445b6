"""`lab2prod serve` as a real server process on loopback, a real HTTP client, a real registry: predictions,
every kind of bad request, hot reload through promotions, a broken champion refused, feedback into the
inbox that the next ingest reads, metrics and the prediction log."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from lab2prod.core.settings import validate_params
from lab2prod.data.dataset import SplitIndex
from lab2prod.data.images import prepare_image
from lab2prod.registry.store import manifest, register, set_champion
from lab2prod.serve.batch import MicroBatcher
from lab2prod.serve.metrics import Metrics
from lab2prod.serve.model import ServedModel
from lab2prod.serve.predict import Classifier
from lab2prod.serve.prediction_log import PredictionLog, log_files, read_log
from tasks.ingest import ingest
from tests.conftest import TINY, digit_png

ROOT = Path(__file__).resolve().parents[1]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def digit(i: int) -> bytes:
    return png_bytes(digit_png(i))


def as_ingest_would_score(onnx_file: Path, data: bytes) -> np.ndarray:
    """Class probabilities for one image file decoded by ingest's own function (prepare_image, what the model
    was trained on) and run by a bare ONNX Runtime session: none of the server's decoding or scoring code."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    h, w, c = json.loads(meta["image_shape_hwc"])
    pixels, _, _ = prepare_image(data, h, c, 40_000_000, meta.get("resize", "stretch"), "png", 95)
    x = pixels.reshape(1, h, w, c).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    z = session.run(None, {session.get_inputs()[0].name: x})[0][0].astype(np.float64)
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


def wait_for(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def served(tiny_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A registry with two versions of the tiny run (no champion at first) and a server following it."""
    work = tmp_path_factory.mktemp("serve")
    project = tiny_run["ws"].prepared.parent.parent  # Workspace.under(project)
    registry = work / "registry"
    register(registry, project, {"note": "test"}, None)
    register(registry, project, {"note": "test"}, "v0001")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = {
        "reload_interval_s": 0.2,
        "log_dir": str(work / "logs"),
        "feedback_dir": str(work / "inbox"),
        "max_images": 16,
        "max_body_mb": 4,
    }
    cmd = [sys.executable, "-m", "lab2prod.cli.main", "serve", "--registry", str(registry), "--port", str(port)]
    cmd += [a for k, v in sets.items() for a in ("-S", f"serve.{k}={v}")]
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)  # no params.yaml there: defaults
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def up() -> bool:
        assert proc.poll() is None, (work / "server.log").read_text()
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 60, "the server to start")
        not_ready = client.get("/readyz")  # no champion yet
        png = (tiny_run["ws"].prepared.parent.parent / "plots/confusion_matrix.png").read_bytes()
        early_feedback = client.post("/feedback", files={"image": ("x.png", png)}, data={"label": "no-such-class"})
        set_champion(registry, "v0001", "test")
        wait_for(lambda: client.get("/readyz").status_code == 200, what="the first champion to load")
        yield {
            "client": client,
            "registry": registry,
            "work": work,
            "onnx": registry / "versions" / "v0001" / manifest(registry, "v0001")["deployable"],
            "not_ready": not_ready,
            "early_feedback": early_feedback,
            "proc": proc,
        }
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
        log.close()


def test_not_ready_until_a_champion_exists_then_ready(served: dict[str, Any]) -> None:
    assert served["not_ready"].status_code == 503 and "no model" in served["not_ready"].json()["detail"]
    assert served["client"].get("/healthz").json() == {"status": "ok"}
    assert served["client"].get("/readyz").json()["model_version"] in ("v0001", "v0002")


def test_feedback_before_a_model_is_loaded_is_refused_and_stores_nothing(served: dict[str, Any]) -> None:
    early = served["early_feedback"]
    assert early.status_code == 503 and "no model loaded" in early.json()["detail"] and early.headers["retry-after"]
    assert not (served["work"] / "inbox" / "no-such-class").exists()


def test_predictions_match_the_model_on_images_decoded_as_ingest_does(served: dict[str, Any]) -> None:
    images = [digit(i) for i in range(6)]
    r = served["client"].post(
        "/predict", files=[("files", (f"d{i}.png", b, "image/png")) for i, b in enumerate(images)], params={"top_k": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-model-version"] == body["model_version"]
    classes = Classifier.load(str(served["onnx"])).classes
    expected = [as_ingest_would_score(served["onnx"], b) for b in images]
    assert [p["name"] for p in body["predictions"]] == [f"d{i}.png" for i in range(6)]
    for p, probs in zip(body["predictions"], expected, strict=True):
        got = [t["probability"] for t in p["top"]]
        assert len(got) == 3 and got == sorted(got, reverse=True)
        assert p["top"][0]["class"] == classes[int(probs.argmax())]
        assert abs(got[0] - float(probs.max())) < 1e-5
    raw = served["client"].post("/predict", content=images[2], headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["predictions"][0]["top"][0] == body["predictions"][2]["top"][0]


@functools.cache
def _bomb() -> bytes:
    return png_bytes(Image.new("1", (20000, 20000)))  # a real 20000 x 20000 PNG (bilevel: quick to write)


BAD_REQUESTS = {
    "text file": (
        lambda: {"content": b"just some text\n", "headers": {"content-type": "text/plain"}},
        422,
        "not_an_image",
    ),
    "truncated png": (lambda: {"content": png_bytes(Image.new("L", (64, 64), 128))[:60]}, 422, "image 1"),
    "20000x20000 image": (lambda: {"content": _bomb()}, 422, "decompression_bomb"),
    "5 MB body over a 4 MB limit": (lambda: {"content": b"\0" * (5 * 2**20)}, 413, "serve.max_body_mb"),
    "form without a file": (lambda: {"data": {"note": "no file here"}, "files": {"x": (None, "y")}}, 422, "no image"),
    "empty body": (lambda: {"content": b""}, 422, "empty request"),
    "1000 images in one request": (
        lambda: {"files": [("files", (f"{i}.png", digit(1), "image/png")) for i in range(1000)]},
        413,
        "serve.max_images",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_that_says_why_and_the_server_answers_after(served: dict[str, Any], case: str) -> None:
    make, status, words = BAD_REQUESTS[case]
    r = served["client"].post("/predict", **make())
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    ok = served["client"].post("/predict", content=digit(3))
    assert ok.status_code == 200 and served["proc"].poll() is None


def test_bad_query_and_unknown_route_are_4xx(served: dict[str, Any]) -> None:
    for bad in (0, -2, "three"):
        r = served["client"].post("/predict", content=digit(3), params={"top_k": bad})
        assert r.status_code == 422 and "top_k" in r.json()["detail"], r.text
    assert served["client"].get("/nowhere").status_code == 404
    assert served["client"].get("/predict").status_code == 405  # only POST classifies


def test_predict_is_in_the_openapi_schema(served: dict[str, Any]) -> None:
    """/predict is served by a plain ASGI handler (the hot path), not a FastAPI route: its docs must still be there."""
    schema = served["client"].get("/openapi.json").json()
    op = schema["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(op["requestBody"]["content"])
    assert [p["name"] for p in op["parameters"]] == ["top_k"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    response = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"model_version", "model_sha256", "predictions"} <= set(response["properties"])
    assert "Prediction" in schema["components"]["schemas"]
    assert "/feedback" in schema["paths"] and served["client"].get("/docs").status_code == 200


def test_promotions_are_followed_and_a_broken_champion_is_refused(served: dict[str, Any], tmp_path: Path) -> None:
    client, registry = served["client"], served["registry"]

    def version() -> str:
        r = client.post("/predict", content=digit(5))
        assert r.status_code == 200, r.text
        return r.json()["model_version"]

    set_champion(registry, "v0002", "promote in test")
    wait_for(lambda: version() == "v0002", what="v0002 to be served")
    # a version whose ONNX file is not a model (its sha256 is what the manifest says: the registry accepts it)
    broken = tmp_path / "broken"
    (broken / "artifacts" / "export").mkdir(parents=True)
    (broken / "artifacts" / "export" / "model.onnx").write_bytes(b"not an onnx model" * 100)
    assert register(registry, broken, {"note": "broken"}, "v0002") == "v0003"
    set_champion(registry, "v0003", "a broken promotion")
    wait_for(lambda: "v0003" in json.dumps(client.get("/model").json()["refused"]), what="v0003 to be refused")
    info = client.get("/model").json()
    assert info["model_version"] == "v0002" and "ONNX Runtime cannot load it" in info["problem"]
    assert all(version() == "v0002" for _ in range(5))
    assert 'lab2prod_model_reloads_total{result="refused"} 1.0' in client.get("/metrics").text
    # a pointer whose sha256 does not match the file: refused too
    records = sorted((registry / "pointers").iterdir())
    pointer = json.loads(records[-1].read_text())
    wrong = {**pointer, "version": "v0001", "onnx_sha256": "0" * 64}  # written by hand, not by set_champion
    (registry / "pointers" / f"{len(records) + 1:08d}.json").write_text(json.dumps(wrong))
    wait_for(lambda: "does not match" in (client.get("/model").json()["problem"] or ""), what="the sha256 refusal")
    assert version() == "v0002"
    set_champion(registry, "v0001", "rollback in test")  # a good pointer again: served
    wait_for(lambda: version() == "v0001", what="v0001 to be served again")
    assert client.get("/readyz").json() == {"status": "ready", "model_version": "v0001"}


def test_feedback_lands_in_the_inbox_and_the_next_ingest_trains_on_it(served: dict[str, Any], tmp_path: Path) -> None:
    client, inbox = served["client"], served["work"] / "inbox"
    pixels = np.asarray(digit_png(7)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # not byte- or pixel-identical to any digits image (no duplicate)
    image = png_bytes(Image.fromarray(pixels))
    r = client.post("/feedback", files={"image": ("mine.png", image, "image/png")}, data={"label": "7"})
    assert r.status_code == 201, r.text
    stored = Path(r.json()["path"])
    assert stored.parent == inbox / "7" and stored.read_bytes() == image
    again = client.post("/feedback", files={"image": ("mine.png", image, "image/png")}, data={"label": "7"})
    assert again.status_code == 200 and again.json()["new"] is False
    for data, words in (
        ({"label": "../../etc"}, "cannot be a class folder name"),
        ({"label": "seven"}, "not one of the model's classes"),
        ({}, "missing form field(s): label"),
    ):
        bad = client.post("/feedback", files={"image": ("x.png", image, "image/png")}, data=data)
        assert bad.status_code == 422 and words in bad.json()["detail"], bad.text
    not_image = client.post("/feedback", files={"image": ("x.png", b"hello", "image/png")}, data={"label": "7"})
    assert not_image.status_code == 422 and "not_an_image" in not_image.json()["detail"]
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == [stored.name]
    # the next ingest reads the inbox (ingest.extra_sources) and puts the correction in a split
    params = validate_params({**TINY, "ingest": {**TINY["ingest"], "extra_sources": [str(inbox)]}})
    ingest(params.ingest, tmp_path / "prepared")
    sources = [s for split in ("train", "val", "test") for s in SplitIndex.read(tmp_path / "prepared", split).sources]
    assert [s for s in sources if s.endswith(stored.name)]


def test_metrics_and_prediction_log_record_what_was_served(served: dict[str, Any]) -> None:
    client = served["client"]
    for i in range(3):
        assert client.post("/predict", content=digit(i)).status_code == 200
    assert client.post("/predict", content=b"not an image").status_code == 422  # counted by its status
    text = client.get("/metrics").text
    assert 'lab2prod_requests_total{endpoint="/predict",status="200"}' in text
    assert 'lab2prod_requests_total{endpoint="/predict",status="422"}' in text
    assert "lab2prod_batch_images_count" in text and "lab2prod_request_seconds_bucket" in text
    assert 'lab2prod_model_info{sha256="' in text
    rows = list(read_log(served["work"] / "logs"))
    assert len(rows) >= 3
    last = rows[-1]
    assert set(last) >= {"time", "model_version", "top1", "confidence", "fingerprint", "mean", "std"}
    assert 0 <= last["mean"] <= 1 and 0 < last["confidence"] <= 1


def test_feedback_cli_checks_the_label_and_the_image(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(digit(4))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # a project-root command

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "lab2prod.cli.main", "feedback", "add", *args, "--inbox", str(tmp_path / "inbox")]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    ok = run(str(image), "--label", "4")
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "inbox" / "4").iterdir())) == 1
    for args, words in (
        ((str(image), "--label", "a/b"), "cannot be a class folder name"),
        ((str(broken), "--label", "4"), "broken.png"),
    ):
        bad = run(*args)
        assert bad.returncode != 0 and words in bad.stderr + bad.stdout
    assert sorted(p.name for p in (tmp_path / "inbox").iterdir()) == ["4"]


def test_micro_batcher_merges_concurrent_requests_and_keeps_each_on_its_model(tiny_run: dict[str, Any]) -> None:
    classifier = Classifier.load(str(tiny_run["onnx"]))
    a = ServedModel(classifier, "va", "a", "now")
    b = ServedModel(classifier, "vb", "b", "now")
    images = np.stack([classifier.decode(digit(i), 40_000_000) for i in range(12)])
    expected = classifier.predict(images)

    async def scenario() -> tuple[list[np.ndarray], Metrics]:
        metrics = Metrics()
        batcher = MicroBatcher(8, 0.05, 1000, metrics, None, 3)
        runner = asyncio.create_task(batcher.run())
        batcher.arriving = 12  # twelve requests on their way in: the first waits for the others
        models = [a if i < 6 else b for i in range(12)]

        async def one(i: int) -> np.ndarray:
            await asyncio.sleep(0.001 * i)
            batcher.arriving -= 1
            return await batcher.submit(models[i], images[i : i + 1], [f"f{i}"], None)

        out = await asyncio.gather(*(one(i) for i in range(12)))
        runner.cancel()
        batcher.executor.shutdown()
        return out, metrics

    out, metrics = asyncio.run(scenario())
    np.testing.assert_allclose(np.concatenate(out), expected, atol=1e-6)
    calls = metrics.batch.collect()[0].samples
    count = next(s.value for s in calls if s.name.endswith("_count"))
    total = next(s.value for s in calls if s.name.endswith("_sum"))
    assert total == 12 and count <= 4  # 12 requests in a few calls (each model's share run apart), not 12


def test_prediction_log_rotates_and_stays_under_its_budget(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, sample=1.0, file_mb=0.002, max_mb=0.006, keep_images=False)  # ~2 KB files
    probs = np.full((4, 10), 0.1)
    images = np.zeros((4, 8, 8, 1), np.uint8)
    for _ in range(60):
        plog.record("v1", "ab" * 32, [str(i) for i in range(10)], probs, images, ["f"] * 4)
    files = log_files(tmp_path)
    assert len(files) >= 2 and plog.deleted > 0
    assert sum(p.stat().st_size for p in files) <= 0.006 * 2**20 + 2048
    assert len(list(read_log(tmp_path))) < plog.written  # the oldest lines went with their files
    sampled = PredictionLog(tmp_path / "sampled", sample=0.25, file_mb=1, max_mb=1, keep_images=False, seed=0)
    logged = sum(sampled.record("v1", "ab", [str(i) for i in range(10)], probs, images, ["f"] * 4) for _ in range(100))
    assert 60 <= logged <= 140  # a quarter of 400
    shutil.rmtree(tmp_path / "sampled")


def _odd_images() -> dict[str, bytes]:
    from tests.test_bad_inputs import encoded, picture

    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "16-bit grey PNG": encoded(Image.fromarray(np.linspace(0, 65535, 1024).reshape(32, 32).astype(np.uint16))),
        "CMYK JPEG": encoded(Image.fromarray(picture(1)).convert("CMYK"), "JPEG", quality=95),
        "palette PNG with transparency": encoded(
            Image.fromarray(picture(2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8), transparency=0
        ),
        "EXIF-rotated JPEG": encoded(Image.fromarray(picture(3)[:, :16]), "JPEG", exif=exif.tobytes()),
    }


@pytest.mark.parametrize("kind", sorted(_odd_images()))
def test_unusual_but_valid_images_are_classified(served: dict[str, Any], kind: str) -> None:
    data = _odd_images()[kind]
    r = served["client"].post("/predict", content=data)
    assert r.status_code == 200, r.text
    expected = as_ingest_would_score(served["onnx"], data)
    assert (
        r.json()["predictions"][0]["top"][0]["class"]
        == Classifier.load(str(served["onnx"])).classes[int(expected.argmax())]
    )
