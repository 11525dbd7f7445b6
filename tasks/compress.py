"""Stage 5, compress: smaller and faster variants of the trained model, each scored and gated.

Variants (each switchable in params.yaml `compress`):
    pruned   structured pruning (torch-pruning): whole channels removed until the MACs are at most
             `prune.target_macs` of the FP32 model's, then fine-tuned with Lightning
    sparse   unstructured global magnitude pruning: `sparse.sparsity` of the weights set to zero;
             same dense shapes, so no smaller and no faster with dense kernels: reported for honesty
    int8     ONNX Runtime post-training quantization (static QDQ per-channel, calibrated on training
             images; or dynamic) of the FP32 ONNX model
    student  knowledge distillation into a narrower network (teacher = the trained model)

Each is scored on the test split (accuracy, macro F1, parameters, MACs, file size) and accepted only
if it loses at most `max_accuracy_drop` / `max_f1_drop` points against FP32 (INT8 also needs
`int8.min_top1_agreement` with FP32). Rejected variants are reported with the reason and their
files are not kept, so export cannot ship them.

Writes:
    artifacts/compress/{pruned,sparse,student}.pt   weights-only model files (accepted variants)
    artifacts/compress/int8.onnx                     the quantized model (if accepted)
    metrics/compress.json                            every variant's figures, verdict and reason
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import numpy as np
import onnxruntime as ort
import torch
import typer
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from models.classifier import ArrayDataModule, DistillationModule, ImageClassifier, load_split, to_model_input
from models.networks import count_macs_and_params, load_model_file, save_model_file
from tasks.artifacts import atomic_dir, write_json
from tasks.config import CompressConfig, Int8Config, Params, load_params
from tasks.evaluate import predict
from tasks.export import onnx_predictions, to_onnx
from tasks.logs import stage_entry

log = logging.getLogger("tasks.compress")  # not __name__: that is __main__ under python -m
# Distillation keeps the teacher in eval mode on purpose; Lightning warns about any eval submodule.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

PREPARED = Path("data/prepared")
AUGMENTED = Path("data/augmented")
MODEL = Path("artifacts/train/model.pt")
OUT_DIR = Path("artifacts/compress")
METRICS = Path("metrics/compress.json")


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def judge(variant: dict[str, Any], fp32: dict[str, Any], cfg: CompressConfig) -> None:
    """Mark a variant accepted or rejected (with the reason) against the FP32 model's scores."""
    reasons = []
    acc_drop = 100 * (fp32["accuracy"] - variant["accuracy"])
    f1_drop = 100 * (fp32["f1_macro"] - variant["f1_macro"])
    if acc_drop > cfg.max_accuracy_drop:
        reasons.append(f"accuracy drops {acc_drop:.2f} points > compress.max_accuracy_drop = {cfg.max_accuracy_drop}")
    if f1_drop > cfg.max_f1_drop:
        reasons.append(f"macro F1 drops {f1_drop:.2f} points > compress.max_f1_drop = {cfg.max_f1_drop}")
    if "macs_target" in variant and variant["macs_vs_fp32"] > variant["macs_target"]:
        reasons.append(f"pruning reached {variant['macs_vs_fp32']:.2f} of the FP32 MACs, not "
                       f"compress.prune.target_macs = {variant['macs_target']} (lower prune.round_to?)")
    agreement = variant.get("top1_agreement_with_fp32")
    if agreement is not None and agreement < cfg.int8.min_top1_agreement:
        reasons.append(f"top-1 agreement with FP32 {agreement:.4f} < compress.int8.min_top1_agreement = "
                       f"{cfg.int8.min_top1_agreement}")
    variant.update(accuracy_drop_points=round(acc_drop, 4), f1_drop_points=round(f1_drop, 4),
                   accepted=not reasons, reason="; ".join(reasons) or "within thresholds")


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------

def finetune(net: nn.Module, spec: dict, data: ArrayDataModule, epochs: int, lr: float, weight_decay: float,
             module: L.LightningModule | None = None) -> nn.Module:
    """A few Lightning epochs on the (augmented) training split; returns the trained network."""
    if module is None:
        module = ImageClassifier(spec, lr=lr, weight_decay=weight_decay, label_smoothing=0.0)
        module.net = net
    module.net.train()  # Lightning keeps modules in the mode it finds them; a pruned copy is in eval
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return module.net.cpu().eval()


def structured_prune(net: nn.Module, image_shape: list[int], target_macs: float, round_to: int = 1) -> nn.Module:
    """Remove whole channels (L2 magnitude, per layer) step by step until MACs <= target * original."""
    import torch_pruning as tp

    net = copy.deepcopy(net).eval()
    height, width, channels = image_shape
    example = torch.zeros(1, channels, height, width)
    base_macs, _ = count_macs_and_params(net, image_shape)
    classifier = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    steps = 40
    pruner = tp.pruner.MetaPruner(net, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.95, iterative_steps=steps, ignored_layers=[classifier],
                                  round_to=round_to if round_to > 1 else None)  # odd widths run slower
    for _ in range(steps):
        pruner.step()
        if count_macs_and_params(net, image_shape)[0] <= target_macs * base_macs:
            break
    return net


def unstructured_prune(net: nn.Module, sparsity: float, finetune_fn=None) -> tuple[nn.Module, float]:
    """Zero the smallest-magnitude `sparsity` share of all conv/linear weights, globally.

    `finetune_fn(net) -> net`, if given, trains with the zero mask held fixed (torch's pruning
    re-parametrisation) before the zeros are made permanent.
    """
    from torch.nn.utils import prune

    net = copy.deepcopy(net)
    layers = [(m, "weight") for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    if finetune_fn is not None:
        net = finetune_fn(net)
    for module, name in layers:
        prune.remove(module, name)
    total = sum(m.weight.numel() for m, _ in layers)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
    return net.eval(), zeros / total


class _CalibrationReader:
    """Feeds ONNX Runtime's calibrator batches of real training images."""

    def __init__(self, images: torch.Tensor, input_name: str, batch: int = 64) -> None:
        self.batches = iter([{input_name: to_model_input(images[i:i + batch]).numpy()}
                             for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8(fp32_onnx: Path, out: Path, calibration: torch.Tensor, cfg: Int8Config) -> None:
    """INT8 with ONNX Runtime: static QDQ (per-channel weights, calibrated activations) or dynamic."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    prepared = out.with_name("int8_preprocessed.onnx")
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    if cfg.mode == "dynamic":
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=cfg.per_channel)
    else:
        input_name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        quantize_static(str(prepared), str(out), _CalibrationReader(calibration, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def compress(params: Params, prepared: Path = PREPARED, augmented: Path = AUGMENTED, model_file: Path = MODEL,
             out_dir: Path = OUT_DIR, metrics_file: Path = METRICS) -> dict[str, Any]:
    """Build, score and gate every enabled variant. Returns the metrics written to `metrics_file`."""
    cfg = params.compress
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    teacher, info = load_model_file(model_file)
    spec = torch.load(model_file, map_location="cpu", weights_only=True)["spec"]
    x_test, y_test = load_split(prepared / "test.npz")
    y_true = y_test.numpy()
    data = ArrayDataModule(augmented / "train.npz", prepared / "val.npz", params.train.batch_size, cfg.seed)
    wd = params.train.weight_decay

    def describe(net: nn.Module, path: Path) -> dict[str, Any]:
        macs, n_params = count_macs_and_params(net, info["image_shape"])
        return {**scores(y_true, predict(net.eval(), x_test)), "macs": macs, "params": n_params,
                "file": str(out_dir / path.name), "bytes": path.stat().st_size}

    variants: dict[str, dict[str, Any]] = {}
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "fp32.pt"
        save_model_file(reference, teacher, spec, info)
        fp32 = describe(teacher, reference)
        fp32["file"] = str(model_file)
        fp32_preds = predict(teacher, x_test)

        if cfg.prune.enabled:
            log.info("compress: structured pruning to <= %.0f%% of the MACs", 100 * cfg.prune.target_macs)
            pruned = structured_prune(teacher, info["image_shape"], cfg.prune.target_macs, cfg.prune.round_to)
            if cfg.prune.finetune_epochs:
                pruned = finetune(pruned, spec, data, cfg.prune.finetune_epochs, cfg.prune.lr, wd)
            save_model_file(tmp / "pruned.pt", pruned, spec, {**info, "variant": "pruned"})
            variants["pruned"] = describe(pruned, tmp / "pruned.pt")
            variants["pruned"].update(macs_vs_fp32=variants["pruned"]["macs"] / fp32["macs"],
                                      macs_target=cfg.prune.target_macs)
        if cfg.sparse.enabled:
            epochs = cfg.sparse.finetune_epochs
            sparse, sparsity = unstructured_prune(
                teacher, cfg.sparse.sparsity,
                (lambda net: finetune(net, spec, data, epochs, cfg.sparse.lr, wd)) if epochs else None)
            save_model_file(tmp / "sparse.pt", sparse, spec, {**info, "variant": "sparse"})
            variants["sparse"] = {**describe(sparse, tmp / "sparse.pt"), "sparsity": sparsity}
        if cfg.distill.enabled:
            d = cfg.distill
            log.info("compress: distilling into a width-%d student for %d epochs", d.student_width, d.epochs)
            student_spec = {**spec, "width": d.student_width}
            module = DistillationModule(student_spec, teacher, lr=d.lr, weight_decay=wd, temperature=d.temperature,
                                        alpha=d.alpha)
            student = finetune(module.net, student_spec, data, d.epochs, d.lr, wd, module=module)
            save_model_file(tmp / "student.pt", student, student_spec, {**info, "variant": "student"})
            variants["student"] = describe(student, tmp / "student.pt")
        if cfg.int8.enabled:
            log.info("compress: INT8 %s quantization with ONNX Runtime", cfg.int8.mode)
            fp32_onnx = Path(scratch) / "fp32.onnx"
            to_onnx(teacher, info["image_shape"], fp32_onnx, params.export.opset)
            x_train, _ = load_split(prepared / "train.npz")
            pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))
            quantize_int8(fp32_onnx, tmp / "int8.onnx", x_train[pick[:cfg.int8.calibration_images]], cfg.int8)
            preds = onnx_predictions(tmp / "int8.onnx", x_test)
            variants["int8"] = {**scores(y_true, preds), "macs": fp32["macs"], "params": fp32["params"],
                                "file": str(out_dir / "int8.onnx"), "bytes": (tmp / "int8.onnx").stat().st_size,
                                "fp32_onnx_bytes": fp32_onnx.stat().st_size,
                                "top1_agreement_with_fp32": float((preds == fp32_preds).mean())}

        for name, variant in variants.items():
            judge(variant, fp32, cfg)
            if not variant["accepted"]:
                (tmp / Path(variant["file"]).name).unlink()
                variant["file"] = None
        metrics = {"fp32": fp32, "variants": variants, "thresholds": {
            "max_accuracy_drop_points": cfg.max_accuracy_drop, "max_f1_drop_points": cfg.max_f1_drop}}
        write_json(metrics_file, metrics)

    for name, v in variants.items():
        log.info("compress: %-7s %s  accuracy %.4f (drop %.2f pt), MACs %d, %d bytes%s", name,
                 "ACCEPTED" if v["accepted"] else "REJECTED", v["accuracy"], v["accuracy_drop_points"], v["macs"],
                 v["bytes"], "" if v["accepted"] else f": {v['reason']}")
    return metrics


@stage_entry
def main(params: Annotated[Path, typer.Option(help="Settings file to read.")] = Path("params.yaml")) -> None:
    """Prune, sparsify, quantize and distil artifacts/train/model.pt; gate each variant on test accuracy."""
    compress(load_params(params))


if __name__ == "__main__":
    typer.run(main)
