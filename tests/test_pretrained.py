"""Starting from other weights: a timm backbone's weights file, the timm hub (offline), the registry
champion (warm start), and the fine-tuning recipe (linear probe, then a lower backbone learning rate).

A timm model's own weights saved to a local file stand in for a download: the tests run offline.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import onnx
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from lab2prod.core.errors import ConfigError, DataError
from lab2prod.core.files import read_json, sha256_file
from lab2prod.core.settings import validate_params
from lab2prod.registry.store import register, set_champion
from models.nets.model_file import load_model_file
from models.nets.networks import classifier_layer
from models.nets.weights import resolve_weights
from models.training.recipe import initial_network
from tasks.train import train
from tests.conftest import TINY

BACKBONE = "test_efficientnet"  # a tiny timm model (0.1 M parameters) with depthwise convs and SE blocks


def settings(**train: Any) -> Any:
    raw = copy.deepcopy(TINY)
    raw["train"].update(train)
    return validate_params(raw)


def own_outputs(base: Any, folder: Path) -> Any:
    """A workspace reading `base`'s prepared data and augmentation policy, writing everything else in `folder`."""
    mine = [f.name for f in dataclasses.fields(base) if f.name not in ("prepared", "augmented")]
    return dataclasses.replace(base, **{name: folder / name for name in mine})


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm backbone's weights (RGB, 1000 classes) as a safetensors file."""
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in timm.create_model(BACKBONE).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / f"{BACKBONE}.safetensors"
    save_file(state, str(path))
    return path, state


def test_a_weights_file_initialises_a_timm_backbone_through_timm(
    weights_file: tuple[Path, dict[str, torch.Tensor]], tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    path, pretrained = weights_file
    meta = read_json(tiny_run["prepared"] / "meta.json")  # 10 classes, 8 x 8 grey
    torch.save(pretrained, tmp_path / "weights.pth")  # a weights-only torch state dict reads the same
    for source in (path, tmp_path / "weights.pth"):
        spec, net, weights = initial_network(settings(architecture=BACKBONE, pretrained=str(source)), meta, tmp_path)
        assert weights.kind == "file" and weights.sha256 == sha256_file(source)
        body = net[1].state_dict()
        stem = pretrained["conv_stem.weight"]
        assert torch.allclose(body["conv_stem.weight"], stem.sum(1, keepdim=True))  # RGB stem summed for grey
        same = [k for k in pretrained if k in body and not k.startswith(("conv_stem", "classifier"))]
        assert len(same) > 20 and all(torch.equal(body[k], pretrained[k]) for k in same)
        assert classifier_layer(net).out_features == 10  # the 1000-class head replaced
        # the backbone's pretrained config: its input size (160) and ImageNet statistics averaged for grey
        cfg = timm.models.get_pretrained_cfg(BACKBONE)
        assert spec.input_size == cfg.input_size[-1] and spec.interpolation == cfg.interpolation
        assert spec.mean == pytest.approx([sum(cfg.mean) / 3]) and spec.std == pytest.approx([sum(cfg.std) / 3])
        assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # resized inside: takes the ingested size

    spec, _, _ = initial_network(settings(architecture=BACKBONE, pretrained=str(path), input_size=32), meta, tmp_path)
    assert spec.input_size == 32
    spec, _, weights = initial_network(settings(architecture=BACKBONE), meta, tmp_path)  # from scratch
    assert weights.kind == "none" and spec.input_size is None and spec.mean == meta["normalization"]["mean"]


def test_settings_and_sources_that_cannot_work_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither built in .* nor a timm model"):
        settings(architecture="mobilenet_v9")
    with pytest.raises(ConfigError, match="needs a timm backbone"):
        settings(pretrained="timm")
    with pytest.raises(ConfigError, match="freeze_epochs = 4 leaves none"):
        settings(freeze_epochs=4)
    with pytest.raises(ConfigError, match=r"no such file .*missing\.safetensors"):
        resolve_weights(str(tmp_path / "missing.safetensors"), BACKBONE, tmp_path, "registry", tmp_path)
    with pytest.raises(ConfigError, match="has no champion yet"):
        resolve_weights("champion", "small_cnn", tmp_path, str(tmp_path / "registry"), tmp_path)
    not_weights = tmp_path / "notes.safetensors"
    not_weights.write_text("not tensors")
    params = settings(architecture=BACKBONE, pretrained=str(not_weights))
    meta = {"image_shape": [8, 8, 1], "classes": ["a", "b"], "normalization": {"mean": [0.5], "std": [0.2]}}
    with pytest.raises(DataError, match=f"notes.safetensors: not weights of the timm model '{BACKBONE}'"):
        initial_network(params, meta, tmp_path)


def test_timm_hub_without_network_or_cache_fails_in_seconds_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: as good as offline
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        resolve_weights("timm", "mobilenetv3_small_100", tmp_path, "registry", tmp_path)
    assert time.monotonic() - start < 20, "it must not hang on retries"
    message = str(err.value)
    assert "not in the local cache" in message and "pre-fetch" in message and "train.pretrained" in message


def test_warm_start_from_the_champion_keeps_its_weights_and_matches_the_head_by_class(
    tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    reg = str(tmp_path / "registry")
    version = register(reg, tiny_run["ws"].prepared.parent.parent, {}, None)
    set_champion(reg, version, "first")
    champion_net, champion_info = load_model_file(tiny_run["model"])
    raw = copy.deepcopy(TINY)
    raw["train"]["pretrained"] = "champion"
    params = validate_params({**raw, "retrain": {"registry_dir": reg}})
    meta = read_json(tiny_run["prepared"] / "meta.json")
    meta["classes"] = ["3", "4", "new"]  # one class the champion never saw, two it knows, seven dropped
    _, net, weights = initial_network(params, meta, tmp_path)
    assert weights.label == f"champion:{version}"
    head, old = classifier_layer(net), classifier_layer(champion_net)
    idx = champion_info.classes.index
    assert torch.equal(head.weight[0], old.weight[idx("3")]) and torch.equal(head.bias[1], old.bias[idx("4")])
    assert not torch.equal(head.weight[2], old.weight[idx("3")])
    body, old_body = net.state_dict(), champion_net.state_dict()
    assert all(torch.equal(body[k], old_body[k]) for k in body if not k.startswith("1.head.3"))

    # a whole run from the champion: its lineage names the version and the file's sha256
    ws = dataclasses.replace(tiny_run["ws"], train_dir=tmp_path / "train", train_metrics=tmp_path / "metrics")
    train(params, ws)
    _, info = load_model_file(ws.model)
    assert info.lineage.weights_source == f"champion:{version}"
    assert info.lineage.weights_sha256 == sha256_file(Path(reg) / "versions" / version / "model.pt")

    wider = params.model_copy(update={"train": params.train.model_copy(update={"width": 16})})
    with pytest.raises(ConfigError, match="does not fit these settings .*width 8 vs 16"):
        initial_network(wider, meta, tmp_path)


class FreezeProbe(L.Callback):
    """Records, after each epoch, how far the backbone and the head have moved from their start."""

    def __init__(self) -> None:
        self.moved: list[tuple[float, float, bool]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = copy.deepcopy(module.net.state_dict())

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        now, head = module.net.state_dict(), {f"1.classifier.{p}" for p in ("weight", "bias")}
        backbone = max((now[k].float() - self.start[k].float()).abs().max().item() for k in now if k not in head)
        moved_head = max((now[k] - self.start[k]).abs().max().item() for k in head)
        self.moved.append((backbone, moved_head, module.net.training))


@pytest.mark.slow
def test_a_pretrained_timm_backbone_runs_the_whole_dag_with_a_linear_probe_first(
    weights_file: tuple[Path, dict[str, torch.Tensor]], tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    from tasks.compress import compress
    from tasks.evaluate import evaluate
    from tasks.export import export

    path, _ = weights_file
    raw = copy.deepcopy(TINY)
    raw["train"].update(
        architecture=BACKBONE, pretrained=str(path), input_size=16, epochs=2, freeze_epochs=1, backbone_lr_scale=0.1
    )
    params = validate_params(raw)
    ws = own_outputs(tiny_run["ws"], tmp_path)
    probe = FreezeProbe()
    train(params, ws, trainer_overrides={"callbacks": [probe]})
    (frozen_backbone, frozen_head, _), (tuned_backbone, _, _) = probe.moved
    assert frozen_backbone == 0.0 and frozen_head > 0.0  # epoch 1: only the head learned, BN statistics too
    assert tuned_backbone > 0.0  # epoch 2: the backbone learns

    evaluate(params.evaluate, ws)
    report = compress(params, ws)
    export(params, ws)
    for name, variant in report["variants"].items():  # accepted with its file, or rejected naming the setting
        if variant["accepted"]:
            assert variant["reason"] == "within thresholds" and variant["file"], name
        else:
            said = variant["reason"].startswith("failed: ") or "compress." in variant["reason"]
            assert said and variant["file"] is None, (name, variant["reason"])
    assert report["variants"]["student"]["macs"] < report["fp32"]["macs"]  # a built-in student, native size
    checked = read_json(ws.export_metrics)["files"]
    assert checked["fp32"]["max_abs_logit_diff"]["7"] <= params.export.atol
    card = (ws.exported / "model_card.md").read_text()
    assert f"timm `{BACKBONE}`" in card and sha256_file(path) in card
    metadata = {p.key: p.value for p in onnx.load(ws.exported / "model.onnx").metadata_props}
    assert metadata["weights_source"] == str(path)


class OptimizerProbe(L.Callback):
    """Records the learning rate of each parameter (by name) and whether the conv weights are NHWC in training."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        by_id = {id(p): name for name, p in module.net.named_parameters()}
        self.lr = {by_id[id(p)]: g["max_lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
        convs = [m.weight for m in module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.ndim == 4]
        self.nhwc = all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_layer_wise_lr_decay_follows_the_timm_layer_groups_and_channels_last_trains(
    tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    from timm.models import group_parameters

    params = settings(
        architecture=BACKBONE, input_size=16, epochs=1, backbone_lr_scale=0.5, layer_decay=0.5, channels_last=True
    )
    ws = own_outputs(tiny_run["ws"], tmp_path)
    probe = OptimizerProbe()
    train(params, ws, trainer_overrides={"callbacks": [probe]})
    assert probe.nhwc
    lr = 2 * params.train.lr  # the head: the full lr, train.lr at batch 32 x sqrt(128 / 32) for TINY's batch
    assert probe.lr["1.classifier.weight"] == pytest.approx(lr)
    net, _ = load_model_file(ws.model)
    body = net[1]
    layer_of = group_parameters(body, body.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())
    for name, _ in body.named_parameters():
        if not name.startswith("classifier."):
            assert probe.lr[f"1.{name}"] == pytest.approx(lr * 0.5 * 0.5 ** (top - layer_of[name])), name
    assert probe.lr["1.conv_stem.weight"] < probe.lr["1.conv_head.weight"] <= lr * 0.5  # deeper = closer to lr
    with pytest.raises(ConfigError, match="layer_decay = 0.7 needs a timm backbone"):
        settings(architecture="small_cnn", layer_decay=0.7)


@pytest.mark.slow
def test_torch_compile_trains_and_writes_a_plain_model_file(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    params = settings(epochs=1, compile=True)
    ws = own_outputs(tiny_run["ws"], tmp_path)
    # one batch each way: every new input shape is another compilation (about 30 s each on 2 CPU cores)
    summary = train(params, ws, trainer_overrides={"limit_train_batches": 1, "limit_val_batches": 1})
    assert summary["epochs"] == 1
    net, info = load_model_file(ws.model)  # the module's own parameter names, no torch.compile wrapper in them
    assert not any("_orig_mod" in k for k in torch.load(ws.model, weights_only=True)["state_dict"])
    x = torch.rand(4, 1, 8, 8)
    assert net.eval()(x).shape == (4, 10)


@pytest.mark.slow
def test_a_linear_probe_trains_under_ddp_with_two_cpu_processes(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    """Plain DDP stops at the first step that leaves a parameter without a gradient, which a frozen backbone does;
    `python -m tasks.train` on 2 CPU processes (gloo) with a linear-probe epoch must train both phases."""
    raw = copy.deepcopy(TINY)
    raw["train"].update(epochs=2, freeze_epochs=1, devices=2, accelerator="cpu", loader="memory")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "data").mkdir()
    for name in ("prepared", "augmented"):
        (tmp_path / "data" / name).symlink_to(tiny_run[name], target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backbone unfrozen at epoch 2" in done.stderr
    net, info = load_model_file(tmp_path / "artifacts/train/model.pt")
    assert info.epochs_trained == 2
