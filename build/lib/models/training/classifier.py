"""The LightningModules: the training recipe for a classifier, and distillation, which changes only the loss."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn

from models.nets.networks import classifier_layer

log = logging.getLogger("lab2prod.train")


class ImageClassifier(L.LightningModule):
    """Trains the network it is given: AdamW + one-cycle schedule, label-smoothed cross-entropy,
    accuracy on train and val.

    Fine-tuning a pretrained network: the backbone (everything but the classifier layer) learns at
    `lr * backbone_lr_scale`; for the first `freeze_epochs` it is frozen, batch norm included (a
    linear probe: only the head learns); `freeze_bn` keeps the backbone's batch-norm statistics
    fixed for the whole run (small batches, or data close to the pretraining data); `layer_decay` < 1
    scales each backbone layer's learning rate by layer_decay ** (its depth from the top), the layers
    as the timm model groups them (layer-wise lr decay, as in BEiT and timm's own fine-tuning).

    `channels_last` keeps weights and inputs in NHWC memory order (faster convolutions on many GPUs);
    `compile` runs the network through torch.compile (README "Figures" has what both do here).
    """

    def __init__(
        self,
        net: nn.Module,
        n_classes: int,
        lr: float,
        weight_decay: float,
        label_smoothing: float = 0.0,
        backbone_lr_scale: float = 1.0,
        freeze_epochs: int = 0,
        freeze_bn: bool = False,
        layer_decay: float = 1.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "student", "teacher"])  # modules travel in the state dict
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        if compile:  # the network only, in place: its state dict keeps its names; metrics and logging stay eager
            self.net.compile()
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=n_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=n_classes)

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        frozen = self.current_epoch < hp.freeze_epochs
        head = classifier_layer(self.net)
        if hp.freeze_epochs:
            head_params = {id(p) for p in head.parameters()}
            for p in self.net.parameters():
                if id(p) not in head_params:
                    p.requires_grad_(not frozen)
            if self.current_epoch == hp.freeze_epochs:
                log.info("fine-tuning: backbone unfrozen at epoch %d", self.current_epoch + 1)
        if frozen or hp.freeze_bn:  # timm's BatchNormAct2d is a _BatchNorm too
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.training_loss(x, logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", self.loss(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        head = {id(p) for p in classifier_layer(self.net).parameters()}
        depth_scale = layer_lr_scales(self.net, hp.layer_decay)
        groups: dict[tuple[bool, bool, float], list[nn.Parameter]] = {}
        for p in self.net.parameters():  # a frozen teacher (distillation) is outside self.net: not optimised
            is_head = id(p) in head
            scale = 1.0 if is_head else hp.backbone_lr_scale * depth_scale.get(id(p), 1.0)
            groups.setdefault((is_head, p.ndim <= 1, scale), []).append(p)  # no weight decay on norms, biases
        param_groups = [
            {"params": ps, "lr": hp.lr * scale, "weight_decay": 0.0 if no_decay else hp.weight_decay}
            for (_, no_decay, scale), ps in sorted(groups.items())
        ]
        optimizer = torch.optim.AdamW(param_groups, lr=hp.lr)
        # OneCycleLR divides by its warm-up length (0.25 * steps - 1): under 8 steps (a tiny data set) that
        # is <= 0; a longer schedule than the run just ends before the learning rate has fully annealed.
        steps = max(8, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in param_groups], total_steps=steps, pct_start=0.25
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def layer_lr_scales(net: nn.Module, layer_decay: float) -> dict[int, float]:
    """id(parameter) -> layer_decay ** (layers between it and the top) for a timm backbone (its own
    `group_matcher` says which parameters form a layer); {} when layer_decay is 1."""
    if layer_decay == 1.0:
        return {}
    body = net[1]
    if not hasattr(body, "group_matcher"):
        raise ValueError(f"layer-wise lr decay needs a timm backbone; {type(body).__name__} has no layer groups")
    from timm.models import group_parameters

    layer_of = group_parameters(body, body.group_matcher(coarse=False), reverse=True)  # name -> layer id
    top = max(layer_of.values())
    return {id(p): layer_decay ** (top - layer_of.get(name, top)) for name, p in body.named_parameters()}


class DistillationModule(ImageClassifier):
    """Trains a student on the teacher's softened outputs (temperature T) and the true labels.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(student, labels)
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        n_classes: int,
        lr: float,
        weight_decay: float,
        temperature: float,
        alpha: float,
    ) -> None:
        super().__init__(student, n_classes, lr=lr, weight_decay=weight_decay)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()  # Lightning puts every submodule in train mode; keep the teacher's BN fixed

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = torch.softmax(self.teacher(x) / self.temperature, dim=1)
        t = self.temperature
        kd = nn.functional.kl_div(torch.log_softmax(logits / t, dim=1), soft, reduction="batchmean")
        return self.alpha * t**2 * kd + (1 - self.alpha) * self.loss(logits, y)
