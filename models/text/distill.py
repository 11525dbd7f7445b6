"""Distilling a fine-tuned text encoder into a shallower one (compress's `student` variant for text): the
teacher's embeddings, its first half of the layers and its head copied into a student of that depth, then
trained on the teacher's softened outputs and the labels (DistillationModule: the image students' loss) for
`compress.distill.epochs` ("auto": the teacher's epochs x `compress.distill_share`, at least one), at
`text.encoder_lr`. Encoders only: the bag-of-words MLP is already the small model."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
from torch import nn

from lab2prod.core.layout import Workspace
from lab2prod.core.settings import Params
from lab2prod.data.text import read_texts
from lab2prod.data.tokens import TextEncoder
from models.compress.variants import finetune
from models.text.model_file import TextModelInfo
from models.text.training import TextData
from models.training.classifier import DistillationModule

log = logging.getLogger("models.text.distill")


def shallower(net: nn.Module, info: TextModelInfo) -> tuple[nn.Module, TextModelInfo]:
    """A student with the first half of the teacher's layers (at least one), every tensor that fits copied."""
    config = dict(info.spec.encoder_config or {})
    keep = max(1, int(config.get("num_hidden_layers", 2)) // 2)
    spec = info.spec.model_copy(update={"encoder_config": {**config, "num_hidden_layers": keep}})
    student = spec.build()
    teacher, state = net.state_dict(), student.state_dict()
    state.update({k: v for k, v in teacher.items() if k in state and state[k].shape == v.shape})
    student.load_state_dict(state)
    return student, info.model_copy(update={"spec": spec, "variant": "student"})


def distill_text(
    params: Params, ws: Workspace, teacher: nn.Module, info: TextModelInfo
) -> tuple[nn.Module, TextModelInfo]:
    """The trained student network (eval mode) and its model-file record."""
    d, encoder = params.compress.distill, TextEncoder(info.tokenizer, info.max_length)
    train_texts, train_labels = read_texts(ws.prepared, "train")
    val_texts, val_labels = read_texts(ws.prepared, "val")
    run = SimpleNamespace(  # what TextData reads of a TextRun
        params=params,
        encoder=encoder,
        train_ids=encoder.ids(train_texts),
        train_labels=np.asarray(train_labels),
        val_ids=encoder.ids(val_texts),
        val_labels=np.asarray(val_labels),
    )
    share = params.compress.distill_share
    epochs = d.epochs if d.epochs != "auto" else max(1, round((info.epochs_trained or 1) * share))
    student, student_info = shallower(teacher, info)
    layers = (student_info.spec.encoder_config or {}).get("num_hidden_layers")
    log.info("compress: text student: %s of the teacher's layers, %d epoch(s) of distillation", layers, epochs)
    batch = params.train.batch_size if params.train.batch_size != "auto" else 32
    module = DistillationModule(
        student, teacher, len(info.classes), params.text.encoder_lr, params.train.weight_decay, d.temperature, d.alpha
    )
    net = finetune(module, TextData(run, batch, params.train.seed), epochs, params.train.seed)  # type: ignore[arg-type]
    return net, student_info
