"""Registry and gate: immutable versions, atomic champion pointer, rollback, champion/challenger."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score, recall_score

from lab2prod.core.errors import RegistryError
from lab2prod.core.files import sha256_file as sha256
from lab2prod.core.settings import validate_params
from lab2prod.data.dataset import SplitIndex
from lab2prod.data.splits import bucket
from lab2prod.registry.gate import decide, export_problem, macro_f1_resampled
from lab2prod.registry.promotion import decide_and_register
from lab2prod.registry.store import (
    champion,
    champion_model,
    local_copy,
    location,
    manifest,
    register,
    rollback,
    set_champion,
    verify,
    versions,
)
from models.export.onnx_export import to_onnx
from models.nets.networks import build_network
from tests.conftest import TINY, bare_onnx_predictions


@pytest.fixture
def project(tmp_path: Path, tiny_run: dict[str, Path]) -> Path:
    """A workspace laid out as the pipeline leaves it, from the tiny run's outputs."""
    root = tmp_path / "project"
    shutil.copytree(tiny_run["export"], root / "artifacts/export")
    (root / "artifacts/train").mkdir(parents=True)
    shutil.copy2(tiny_run["model"], root / "artifacts/train/model.pt")
    (root / "metrics").mkdir()
    shutil.copy2(tiny_run["metrics"], root / "metrics/evaluate.json")
    shutil.copy2(tiny_run["compress_metrics"], root / "metrics/compress.json")
    (root / "data/prepared").mkdir(parents=True)
    shutil.copy2(tiny_run["prepared"] / "meta.json", root / "data/prepared/meta.json")
    return root


@pytest.fixture(params=["local", "object store"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A registry location: a local directory, or a URL on fsspec's in-memory filesystem (the code
    path S3, GCS and Azure take: no renames, no file modes)."""
    if request.param == "local":
        yield str(tmp_path / "registry")
        return
    url = f"memory://lab2prod-{uuid.uuid4().hex}/registry"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm(root, recursive=True)


def read(url: str) -> bytes:
    with fsspec.open(url, "rb") as fh:
        return fh.read()


def test_versions_are_immutable_copies_with_lineage(project: Path, reg: str) -> None:
    v1 = register(reg, project, {"dataset_hash": "abc"}, parent=None)
    assert v1 == "v0001" and versions(reg) == [v1]
    m = manifest(reg, v1)
    assert m["lineage"] == {"dataset_hash": "abc"} and m["parent"] is None
    onnx_file = f"{reg}/versions/{v1}/model.onnx"
    assert read(onnx_file) == (project / "artifacts/export/model.onnx").read_bytes()
    assert m["files"]["model.onnx"] == sha256(project / "artifacts/export/model.onnx")
    assert m["files"]["model.onnx"] == hashlib.sha256(read(onnx_file)).hexdigest()
    assert {"model.pt", "evaluate.json", "compress.json", "data_meta.json", "model_card.md"} <= set(m["files"])
    if "://" not in reg:  # local files are made read-only; object stores rely on the sha256 check
        assert all(p.stat().st_mode & 0o222 == 0 for p in Path(onnx_file).parent.iterdir())
    assert register(reg, project, {}, parent=v1) == "v0002"
    assert versions(reg) == ["v0001", "v0002"]


def test_the_served_file_is_exports_deployable_default(project: Path, reg: str, tiny_run: dict[str, Path]) -> None:
    shutil.copy2(tiny_run["benchmark"], project / "metrics/benchmark.json")
    default = json.loads((project / "metrics/benchmark.json").read_text())["deployable_default"]
    expected = "model.onnx" if default == "onnx_fp32" else f"model_{default[len('onnx_') :]}.onnx"
    v1 = register(reg, project, {}, None)
    assert manifest(reg, v1)["deployable"] == expected
    pointer = set_champion(reg, v1, "first")
    assert pointer["onnx"] == expected
    assert read(champion_model(reg)) == (project / "artifacts/export" / expected).read_bytes()
    # a benchmark naming a file the export did not write is refused, not registered half-way
    (project / "metrics/benchmark.json").write_text(json.dumps({"deployable_default": "onnx_ghost"}))
    with pytest.raises(RegistryError, match="model_ghost.onnx"):
        register(reg, project, {}, None)
    assert versions(reg) == [v1]


def test_champion_pointer_promote_and_rollback(project: Path, reg: str) -> None:
    v1 = register(reg, project, {}, None)
    set_champion(reg, v1, "first")
    v1_onnx = read(f"{reg}/versions/{v1}/model.onnx")
    (project / "artifacts/export/model.onnx").write_bytes(b"a different model")
    v2 = register(reg, project, {}, v1)
    set_champion(reg, v2, "better")
    assert champion(reg)["version"] == v2 and read(champion_model(reg)) == b"a different model"
    pointer = rollback(reg)
    assert pointer["version"] == v1 == champion(reg)["version"]
    # the file the pointer names is byte-identical to the one recorded for that version
    assert champion_model(reg).endswith(f"/registry/versions/{v1}/model.onnx")
    assert read(champion_model(reg)) == v1_onnx
    assert pointer["onnx"] == "model.onnx" and pointer["onnx_sha256"] == manifest(reg, v1)["files"]["model.onnx"]
    assert rollback(reg, to=v2)["version"] == v2
    history = [json.loads(line) for line in read(f"{reg}/history.jsonl").decode().splitlines()]
    assert [h["to"] for h in history] == [v1, v2, v1, v2]


def test_tampered_version_cannot_become_champion(project: Path, reg: str) -> None:
    v1 = register(reg, project, {}, None)
    fs, target = fsspec.core.url_to_fs(f"{reg}/versions/{v1}/model.onnx")
    if "://" not in reg:
        Path(target).chmod(0o644)
    fs.pipe_file(target, b"tampered")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        verify(reg, v1)
    with pytest.raises(RegistryError):
        set_champion(reg, v1, "should fail")
    assert champion(reg) is None


def test_a_remote_registry_serves_the_flow_and_the_gate(project: Path, tmp_path: Path) -> None:
    """What the retrain flow does with an s3://-style registry: a local copy of the champion to score."""
    url = f"memory://lab2prod-{uuid.uuid4().hex}/registry"
    set_champion(url, register(url, project, {}, None), "first")
    current = champion(url)
    copy = local_copy(url, current["version"], current["onnx"], tmp_path / "scratch")
    assert copy.parent == tmp_path / "scratch" and copy.read_bytes() == read(champion_model(url))
    assert location(project, url) == url and location(project, "registry") == str(project / "registry")


def test_cli_lists_and_explains_errors(project: Path, tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    set_champion(reg, register(reg, project, {"metrics": {"accuracy": 0.5, "f1_macro": 0.4}}, None), "first")

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "lab2prod.cli.main", "registry", *args, "--registry", str(reg)]
        return subprocess.run(cmd, capture_output=True, text=True)

    listed = run("list")
    assert listed.returncode == 0 and "v0001" in listed.stdout and "0.5000" in listed.stdout
    failed = run("rollback")
    assert failed.returncode == 2 and "no earlier champion" in failed.stderr
    missing = run("promote", "v0042")
    assert missing.returncode == 2 and "no version 'v0042'" in missing.stderr


def test_predict_refuses_a_champion_file_changed_after_registration(
    project: Path, tmp_path: Path, image_folder: Path
) -> None:
    reg = tmp_path / "registry"
    version = register(reg, project, {}, None)
    set_champion(reg, version, "first")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"retrain": {"registry_dir": str(reg)}}))

    def predict() -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "lab2prod.cli.main", "predict", str(image_folder / "digit_1")]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)

    assert predict().returncode == 0
    served = reg / "versions" / version / champion(reg)["onnx"]
    served.chmod(0o644)
    with served.open("ab") as fh:  # still a loadable ONNX file (trailing bytes), but not the registered one
        fh.write(b"\0")
    tampered = predict()
    assert tampered.returncode == 2 and "does not match the registry's record" in tampered.stderr, tampered.stderr
    assert "Traceback" not in tampered.stderr


def test_a_damaged_champion_record_is_a_clear_error_and_deleting_it_falls_back(project: Path, tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    v1 = register(reg, project, {"metrics": {"accuracy": 0.5, "f1_macro": 0.4}}, None)
    set_champion(reg, v1, "first")
    set_champion(reg, register(reg, project, {"metrics": {"accuracy": 0.6, "f1_macro": 0.5}}, v1), "second")
    newest = sorted((reg / "pointers").iterdir())[-1]
    newest.chmod(0o644)
    newest.write_text("{not json")
    for args in (["registry", "list", "--registry", str(reg)], ["registry", "promote", v1, "--registry", str(reg)]):
        proc = subprocess.run([sys.executable, "-m", "lab2prod.cli.main", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        said = " ".join(proc.stderr.split())  # rich wraps long lines
        assert newest.name in said and "is not valid JSON" in said and "delete it" in said, said
    newest.write_text(json.dumps({"note": "no version"}))
    with pytest.raises(RegistryError, match="needs a 'version'"):
        champion(reg)
    newest.unlink()
    assert champion(reg)["version"] == v1


def test_gate_promotes_only_a_better_challenger(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    cfg = validate_params({}).retrain
    good = tiny_run["onnx"]
    classes = [str(i) for i in range(10)]
    test = tiny_run["prepared"]
    first = decide(good, None, test, classes, cfg)
    assert first.promote and "no champion yet" in first.reason
    evaluated = json.loads(tiny_run["metrics"].read_text())  # PyTorch's figures on the same split
    assert first.scores["challenger"]["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-3)
    assert first.scores["challenger"]["f1_macro"] == pytest.approx(evaluated["f1_macro"], abs=1e-3)
    torch.manual_seed(0)
    untrained = build_network("small_cnn", 1, 10, 8, 0.0, [0.5], [0.25]).eval()
    bad = tmp_path / "bad.onnx"
    to_onnx(untrained, [8, 8, 1], bad, 18)
    worse = decide(bad, good, test, classes, cfg)
    assert not worse.promote and "retrain.min_f1_gain" in worse.reason and "recall drops" in worse.reason
    assert worse.challenger_f1 < worse.champion_f1
    assert worse.scores["champion"] == first.scores["challenger"]  # both scored on the same split
    # the recall drops, measured here: both files run by bare ONNX Runtime sessions, recall by scikit-learn
    labels, by_good = bare_onnx_predictions(good, test)
    _, by_bad = bare_onnx_predictions(bad, test)
    recall_good, recall_bad = (
        recall_score(labels, p, labels=range(10), average=None, zero_division=0) for p in (by_good, by_bad)
    )
    measured = {classes[i]: 100 * (recall_good[i] - recall_bad[i]) for i in range(10) if recall_good[i] > recall_bad[i]}
    assert worse.recall_drops.keys() == measured.keys()
    assert all(worse.recall_drops[c] == pytest.approx(measured[c], abs=1e-3) for c in measured)
    same = decide(good, good, test, classes, cfg)
    assert same.promote and same.recall_drops == {}  # a gain of 0 meets a margin of 0
    strict = decide(good, good, test, classes, validate_params({"retrain": {"min_f1_gain": 0.5}}).retrain)
    assert not strict.promote and "gain +0.00 points" in strict.reason


def test_gate_scores_both_models_only_on_images_neither_trained_on(tiny_run: dict[str, Path]) -> None:
    """A champion split by another rule trained on part of today's test split: those images are left out."""
    cfg = validate_params({}).retrain
    good, prepared, classes = tiny_run["onnx"], tiny_run["prepared"], [str(i) for i in range(10)]
    hashes = SplitIndex.read(prepared, "test").sha256
    same_rule = json.loads((prepared / "meta.json").read_text())["split_rule"]
    fair = decide(good, good, prepared, classes, cfg, champion_rule=same_rule)
    assert fair.test_images["used"] == len(hashes) and fair.test_images["excluded"] == 0  # same rule: nothing seen
    other = {"seed": 999, "val": 0.15, "test": 0.25}
    seen_by_champion = sum(bucket(h, 999) >= 0.25 for h in hashes)  # in the champion's train/val
    d = decide(good, good, prepared, classes, cfg, champion_rule=other)
    assert 0 < seen_by_champion == d.test_images["excluded"] and d.test_images["used"] == len(hashes) - seen_by_champion
    assert "seed 999" in d.test_images["why"] and d.promote  # the same model ties on the images left
    too_few = decide(good, good, prepared, classes, cfg, champion_rule={"seed": 999, "val": 0.15, "test": 0.01})
    assert not too_few.promote and "too few to decide" in too_few.reason


def test_the_bootstraps_macro_f1_is_scikit_learns_on_every_resample() -> None:
    """The gate's vectorised macro F1 against scikit-learn's f1_score, resample by resample, class 3 of 4 never
    seen nor predicted in some (scored 0, as zero_division=0 does)."""
    rng = np.random.default_rng(0)
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 3, 0, 1, 2, 1])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2, 3, 0, 2, 2, 3])
    idx = rng.integers(0, len(y_true), (200, len(y_true)))
    expected = [f1_score(y_true[i], y_pred[i], labels=[0, 1, 2, 3], average="macro", zero_division=0) for i in idx]
    assert np.allclose(macro_f1_resampled(y_true, y_pred, idx, 4), expected, rtol=0, atol=1e-12)
    assert any(3 not in y_true[i] and 3 not in y_pred[i] for i in idx)  # the zero-division case did come up


def test_gate_reports_a_bootstrap_interval_and_can_require_significance(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    good, prepared, classes = tiny_run["onnx"], tiny_run["prepared"], [str(i) for i in range(10)]
    torch.manual_seed(0)
    untrained = tmp_path / "untrained.onnx"
    to_onnx(build_network("small_cnn", 1, 10, 8, 0.0, [0.5], [0.25]).eval(), [8, 8, 1], untrained, 18)
    better = decide(good, untrained, prepared, classes, validate_params({}).retrain)
    lo, hi = better.test_images["f1_gain_ci95"]
    assert 0 < lo <= 100 * (better.challenger_f1 - better.champion_f1) <= hi  # a trained model vs chance
    tie = decide(good, good, prepared, classes, validate_params({}).retrain)
    assert tie.test_images["f1_gain_ci95"] == [0.0, 0.0] and tie.promote  # the same model: no difference at all
    strict = validate_params({"retrain": {"require_significance": True}}).retrain
    refused = decide(good, good, prepared, classes, strict)
    assert not refused.promote and "not significant" in refused.reason
    assert decide(good, untrained, prepared, classes, strict).promote  # a real gain passes


def test_gate_rejects_a_served_file_that_skipped_exports_checks(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    export_json = tiny_run["export_metrics"]
    assert export_problem(export_json, "model.onnx") is None
    problem = export_problem(export_json, "model_unchecked.onnx")
    assert "model_unchecked.onnx is not among the files that passed" in problem
    assert "missing" in export_problem(tmp_path / "nope.json", "model.onnx")
    cfg = validate_params({}).retrain
    verdict = decide(
        tiny_run["onnx"],
        None,
        tiny_run["prepared"],
        [str(i) for i in range(10)],
        cfg,
        checks_failed=problem,
    )
    assert not verdict.promote and verdict.reason.startswith("not deployable: ")


def test_no_champion_and_a_challenger_that_failed_export_checks_is_registered_not_promoted(
    project: Path, tmp_path: Path, tiny_run: dict[str, Path]
) -> None:
    """Issue 13's crash: no champion yet and export's checks missing must end "not promoted", not a TypeError."""
    shutil.copytree(tiny_run["prepared"] / "test", project / "data/prepared/test")
    (project / "params.yaml").write_text(yaml.safe_dump(TINY))
    reg = str(tmp_path / "registry")
    log = logging.getLogger("test")
    first = decide_and_register(project, reg, {}, log)  # metrics/export.json absent: the checks did not run
    assert first["promoted"] is False and "export checks did not run" in first["reason"]
    assert first["champion"] is None and first["previous_champion"] is None
    assert champion(reg) is None and versions(reg) == ["v0001"]  # registered with its lineage, not champion
    assert manifest(reg, "v0001")["lineage"]["decision"]["promote"] is False
    shutil.copy2(tiny_run["export_metrics"], project / "metrics/export.json")
    second = decide_and_register(project, reg, {}, log)  # the same model, now with its checks passed
    assert second["promoted"] and second["champion"] == "v0002" == champion(reg)["version"]
    third = decide_and_register(project, reg, {}, log)  # against a champion now: its split rule is read back
    test_images = manifest(reg, third["version"])["lineage"]["decision"]["test_images"]
    assert test_images["excluded"] == 0 and test_images["used"] > 0 and "seed" in test_images["why"]


def test_a_model_that_does_not_beat_the_baseline_is_never_promoted(
    project: Path, tmp_path: Path, tiny_run: dict[str, Path]
) -> None:
    """Evaluate's verdict is part of the gate: with the bar raised past what any model can reach (margin 100
    points), the same tiny model that passes at the default bar is registered, never promoted, and its card
    says NOT DEPLOYABLE; the fastest file is still what the registry keeps."""
    from lab2prod.core.layout import Workspace
    from lab2prod.serve.runtime import variant_file
    from tasks.evaluate import evaluate
    from tasks.export import export

    ws_dir = tmp_path / "strict"
    shutil.copytree(tiny_run["ws"].prepared.parent.parent, ws_dir, symlinks=True)
    ws = Workspace.under(ws_dir)
    strict = validate_params({**TINY, "evaluate": {**TINY["evaluate"], "margin_points": 100.0}})
    metrics = evaluate(strict.evaluate, ws)
    assert metrics["verdict"]["passed"] is False and "NOT DEPLOYABLE" in metrics["verdict"]["line"]
    export(strict, ws)
    bench = json.loads(ws.benchmark.read_text())
    assert bench["deployable_default"] is None and bench["fastest"].startswith("onnx_")
    card = (ws.exported / "model_card.md").read_text()
    assert "NOT DEPLOYABLE" in card and "Deployable default" not in card
    (ws_dir / "params.yaml").write_text(yaml.safe_dump(TINY))
    reg = str(tmp_path / "registry")
    outcome = decide_and_register(ws_dir, reg, {}, logging.getLogger("test"))
    assert outcome["promoted"] is False and "evaluate's verdict" in outcome["reason"]
    assert champion(reg) is None and versions(reg) == ["v0001"]
    assert manifest(reg, "v0001")["deployable"] == variant_file(bench["fastest"])


def _race(reg: str, project: Path, writers: int, expect: object) -> list[tuple[str, str]]:
    """`writers` processes (threads for the in-memory store, which lives in one process) that each register
    a version and promote it at the same moment; returns (version, "promoted" | the ChampionChanged text)."""
    import multiprocessing
    import threading

    from lab2prod.registry.store import ANY, ChampionChanged

    def work(barrier: object, out: object) -> None:
        barrier.wait()
        version = register(reg, project, {"note": "race"}, None)
        try:
            set_champion(reg, version, "race", **({} if expect is ANY else {"expect": expect}))
            out.put((version, "promoted"))
        except ChampionChanged as exc:
            out.put((version, str(exc)))

    if reg.startswith("memory://"):
        import queue

        barrier, out = threading.Barrier(writers), queue.Queue()
        runners = [threading.Thread(target=work, args=(barrier, out)) for _ in range(writers)]
    else:
        ctx = multiprocessing.get_context("fork")
        barrier, out = ctx.Barrier(writers), ctx.Queue()
        runners = [ctx.Process(target=work, args=(barrier, out)) for _ in range(writers)]
    for r in runners:
        r.start()
    results = [out.get(timeout=120) for _ in runners]
    for r in runners:
        r.join(timeout=60)
    return sorted(results)


def test_concurrent_registrations_get_distinct_versions_and_one_champion(project: Path, reg: str) -> None:
    results = _race(reg, project, 2, expect=None)  # both saw no champion and promote only if that still holds
    assert [v for v, _ in results] == ["v0001", "v0002"] and versions(reg) == ["v0001", "v0002"]
    for v, _ in results:
        verify(reg, v)  # both complete
    winners = [v for v, outcome in results if outcome == "promoted"]
    losers = [outcome for _, outcome in results if outcome != "promoted"]
    assert len(winners) == 1 and champion(reg)["version"] == winners[0]
    assert "another writer changed it" in losers[0]
    from lab2prod.registry.store import champion_history

    history = champion_history(reg)
    assert [(h["from"], h["version"]) for h in history] == [(None, winners[0])]


def test_concurrent_promotions_are_serialised_into_one_consistent_history(project: Path, reg: str) -> None:
    from lab2prod.registry.store import ANY, champion_history

    results = _race(reg, project, 4, expect=ANY)  # unconditional promotions: every one lands, one after another
    assert [v for v, _ in results] == ["v0001", "v0002", "v0003", "v0004"]
    assert all(outcome == "promoted" for _, outcome in results)
    history = champion_history(reg)
    assert sorted(h["version"] for h in history) == ["v0001", "v0002", "v0003", "v0004"]
    assert [h["from"] for h in history] == [None] + [h["version"] for h in history[:-1]]  # each saw the last one
    assert champion(reg)["version"] == history[-1]["version"]
    lines = [json.loads(x) for x in read(f"{reg}/history.jsonl").decode().splitlines()]
    assert [x["to"] for x in lines] == [h["version"] for h in history]


def test_a_registry_from_before_pointer_records_keeps_its_champion_and_history(project: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "registry")
    v1, v2 = register(reg, project, {}, None), register(reg, project, {}, None)
    set_champion(reg, v1, "first")
    set_champion(reg, v2, "second")
    shutil.rmtree(Path(reg) / "pointers")  # what an older lab2prod left: champion.json and history.jsonl only
    assert champion(reg)["version"] == v2
    assert rollback(reg)["version"] == v1  # the history carried over
    assert [json.loads(x)["to"] for x in read(f"{reg}/history.jsonl").decode().splitlines()] == [v1, v2, v1]


def test_names_from_a_command_line_or_a_tampered_pointer_cannot_lead_outside_the_registry(
    project: Path, tmp_path: Path
) -> None:
    reg = tmp_path / "registry"
    v1 = register(reg, project, {}, None)
    set_champion(reg, v1, "first")
    for bad in ("../v0001", "v0001/../../x", "..", "latest"):
        with pytest.raises(RegistryError, match="not a version name"):
            manifest(reg, bad)
        with pytest.raises(RegistryError):
            set_champion(reg, bad, "by hand")
    with pytest.raises(RegistryError):
        rollback(reg, to="../../etc")
    records = sorted((reg / "pointers").iterdir())
    tampered = {**json.loads(records[-1].read_text()), "onnx": "../../../../etc/passwd"}
    (reg / "pointers" / f"{len(records) + 1:08d}.json").write_text(json.dumps(tampered))
    with pytest.raises(RegistryError, match="refusing to read or write outside it"):
        champion_model(reg)


class _Payload:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_model_file_with_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    from lab2prod.core.errors import DataError
    from models.nets.model_file import load_model_file

    marker = tmp_path / "code-ran"
    torch.save({"format": "lab2prod-model/1", "state_dict": {}, "evil": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(DataError, match="refused: it holds pickled objects"):
        load_model_file(tmp_path / "model.pt")
    assert not marker.exists()
