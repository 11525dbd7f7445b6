"""Training a text model with the image recipe's LightningModule (models/training/classifier.py): the network,
its tokenizer learned on the training split, and batches of similar length (little padding), token dropout as
augmentation. tasks/train.py runs it when the prepared data is text."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lab2prod.core.errors import ConfigError
from lab2prod.core.layout import Workspace
from lab2prod.core.settings import Params, TrainConfig
from lab2prod.data.text import read_texts
from lab2prod.data.tokens import TextEncoder, train_tokenizer
from models.nets.model_file import Lineage
from models.nets.networks import transfer_weights
from models.nets.weights import WeightsSource, resolve_weights
from models.text.encoder import load_pretrained
from models.text.model_file import TextModelInfo, load_text_model
from models.text.networks import TextSpec

log = logging.getLogger("models.text.training")


class LengthBatches:
    """Each epoch: indices shuffled, cut into chunks of 50 batches, each chunk sorted by length, then cut into
    batches whose order is shuffled: batches of similar length without a fixed order."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> None:
        self.lengths, self.batch_size, self.seed, self.shuffle, self.epoch = lengths, batch_size, seed, shuffle, 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        chunk = self.batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        for k in rng.permutation(len(batches)) if self.shuffle else range(len(batches)):
            yield batches[k].tolist()


class TextData(L.LightningDataModule):
    def __init__(self, run: TextRun, batch_size: int, seed: int) -> None:
        super().__init__()
        self.run, self.batch_size, self.seed = run, batch_size, seed

    def _loader(self, ids: list[list[int]], labels: np.ndarray, train: bool) -> DataLoader:
        lengths = np.asarray([len(i) for i in ids])
        drop, rng = self.run.params.text.token_dropout if train else 0.0, np.random.default_rng(self.seed)

        def collate(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.run.encoder.pad([ids[i] for i in rows])
            if drop:
                x[(rng.random(x.shape) < drop) & (x != self.run.encoder.pad_id)] = self.run.encoder.pad_id
            return torch.from_numpy(x), torch.from_numpy(labels[rows])

        sampler = LengthBatches(lengths, self.batch_size, self.seed, shuffle=train)
        return DataLoader(list(range(len(ids))), batch_sampler=sampler, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.run.train_ids, self.run.train_labels, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.run.val_ids, self.run.val_labels, False)


def champion_start(params: Params) -> tuple[nn.Module, TextModelInfo, WeightsSource]:
    """`train.pretrained: champion` for text: the registry champion's text model file, checked to be the kind of
    model `text.model` asks for."""
    with tempfile.TemporaryDirectory(prefix="lab2prod-weights-") as scratch:
        weights = resolve_weights("champion", "text", Path("."), params.retrain.registry_dir, Path(scratch))
        assert weights.path is not None
        try:
            net, info = load_text_model(weights.path)
        except Exception:  # an image model file, or no model file lab2prod can read as text
            raise ConfigError(
                f"train.pretrained = 'champion': the champion ({weights.label}) is not a text model; start this "
                "text model from 'none' (train.pretrained=none)"
            ) from None
    wanted = "encoder" if params.text.model == "encoder" else "ngram_mlp"
    if info.spec.architecture != wanted:
        raise ConfigError(
            f"train.pretrained = 'champion': the champion ({weights.label}) is a {info.spec.architecture} model, "
            f"not what text.model = {params.text.model!r} trains; set text.model to the champion's or start from none"
        )
    return net, info, weights


class TextRun:
    """The training split's texts tokenized with a tokenizer learned on them, the network to train, and the
    model file's record."""

    def __init__(self, params: Params, ws: Workspace, meta: dict) -> None:
        self.params, cfg = params, params.text
        texts, self.train_labels = read_texts(ws.prepared, "train")
        val_texts, self.val_labels = read_texts(ws.prepared, "val")
        self.classes, self.pretrained, self.warm = meta["classes"], None, None
        if params.train.pretrained == "champion":  # the champion's tokenizer, network and weights
            self.warm = champion_start(params)
            self.tokenizer = self.warm[1].tokenizer  # its embeddings fit its own token ids only
        elif cfg.model == "encoder":  # its own tokenizer, weights and config
            config, state, self.tokenizer, label, digest = load_pretrained(cfg.encoder)
            self.pretrained = (state, WeightsSource("file", label, None, digest))
        else:
            self.tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.lowercase).to_str()
        self.encoder = TextEncoder(self.tokenizer, cfg.max_length)
        self.train_ids, self.val_ids = self.encoder.ids(texts), self.encoder.ids(val_texts)
        common = {"vocab_size": self.encoder.tokenizer.get_vocab_size(), "n_classes": len(self.classes)}
        common |= {"dropout": cfg.dropout, "pad_id": self.encoder.pad_id}
        if self.warm is not None:
            self.spec = self.warm[1].spec.model_copy(update=common)
        elif cfg.model == "encoder":
            self.spec = TextSpec(
                architecture="encoder", embed_dim=config["hidden_size"], hidden=0, encoder_config=config, **common
            )
        else:
            self.spec = TextSpec(
                embed_dim=cfg.embed_dim, hidden=cfg.hidden, ngrams=cfg.ngrams, buckets=cfg.buckets, **common
            )
        lengths = [len(i) for i in self.train_ids]
        log.info(
            "train: text model %s, vocabulary %d, %d training texts of %.0f tokens on average (longest %d, cut at %d)",
            cfg.model, self.spec.vocab_size, len(texts), np.mean(lengths), max(lengths), cfg.max_length,
        )  # fmt: skip

    def network(self) -> nn.Module:
        """The network to train: random weights (the MLP), or the pretrained encoder's with a fresh head."""
        net = self.spec.build()
        if self.warm is not None:
            source, info, weights = self.warm
            report = transfer_weights(net, source, info.classes, self.classes)
            log.info(
                "train: warm start from %s: %d tensors copied, %d classes kept, new classes %s",
                weights.label, report["tensors_copied"], len(report["classes_kept"]), report["classes_new"] or "none",
            )  # fmt: skip
        elif self.pretrained is not None:
            net[0].encoder.load_state_dict(self.pretrained[0])
        return net

    def train_settings(self) -> TrainConfig:
        """The train settings as this network trains: image-only ones off; an encoder at text.encoder_lr (its
        head at train.lr) for at most text.encoder_epochs under epochs auto."""
        cfg, text = self.params.train, self.params.text
        update: dict[str, Any] = {"channels_last": False, "compile": False}
        if text.model == "encoder":
            most = min(cfg.max_epochs, text.encoder_epochs)
            update |= {
                "backbone_lr_scale": text.encoder_lr / cfg.lr,
                "max_epochs": most,
                "min_epochs": min(cfg.min_epochs, most),
            }
        return cfg.model_copy(update=update)

    def weights(self) -> WeightsSource:
        if self.warm is not None:
            return self.warm[2]
        if self.pretrained is not None:
            return self.pretrained[1]
        if self.params.train.pretrained != "none":
            raise ConfigError(
                f"train.pretrained = {self.params.train.pretrained!r}: the text MLP starts from random weights; "
                "set train.pretrained to none"
            )
        return WeightsSource("none", "none")

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    def datamodule(self, batch_size: int, seed: int) -> TextData:
        return TextData(self, batch_size, seed)

    def info(self, lineage: Lineage, best_val_loss: float, epochs: int) -> TextModelInfo:
        return TextModelInfo(
            spec=self.spec,
            classes=self.classes,
            tokenizer=self.tokenizer,
            max_length=self.params.text.max_length,
            lineage=lineage,
            best_val_loss=best_val_loss,
            epochs_trained=epochs,
        )
