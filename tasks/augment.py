"""Stage 2, augment: the augmentation policy, a preview of it, and offline copies only when asked for.

By default nothing is stored per image: training applies the policy per batch on its device
(online, models/training/augmentation.py), seeded and identical after a resume. `offline_copies: k` > 0
also writes k augmented copies of each training image as shards (small data only: the log shows
what they cost in bytes and seconds). Validation and test splits are never augmented. Output:

    data/augmented/policy.json          the resolved augment settings and seed training applies
    data/augmented/copies/              offline copies' shards + index.csv (only when offline_copies > 0)
    plots/augment_preview.png           one image of each class beside augmented versions of it
"""

from __future__ import annotations

import logging
import time

import matplotlib

matplotlib.use("Agg")

from lab2prod.core.console import ParamsFile, run_stage  # noqa: E402
from lab2prod.core.files import atomic_dir, read_json, write_json  # noqa: E402
from lab2prod.core.layout import PARAMS, WORKSPACE, Workspace  # noqa: E402
from lab2prod.core.settings import AugmentConfig, load_params  # noqa: E402
from lab2prod.data.dataset import SplitIndex  # noqa: E402
from lab2prod.data.text import read_texts  # noqa: E402
from models.text.preview import save_text_preview  # noqa: E402
from models.training.augmentation import COPIES, POLICY_FILE  # noqa: E402
from models.training.preview import save_preview, write_copies

log = logging.getLogger("tasks.augment")  # not __name__: that is __main__ under python -m


def augment(cfg: AugmentConfig, ws: Workspace = WORKSPACE) -> dict:
    """Write the policy, the preview and any offline copies. Returns the stage summary."""
    started = time.perf_counter()
    meta = read_json(ws.prepared / "meta.json")
    if meta.get("modality") == "text":  # no image augmentation: the policy says so, the preview shows the texts
        texts, labels = read_texts(ws.prepared, "train")
        with atomic_dir(ws.augmented) as tmp:
            write_json(tmp / POLICY_FILE, {"online": True, "offline_copies": 0, "modality": "text", "settings": {}})
        save_text_preview(texts, labels, meta["classes"], ws.augment_preview, cfg.preview_images)
        log.info(
            "augment: text data, no augmentation (text.token_dropout acts in training); preview in %s",
            ws.augment_preview,
        )
        return {"train_texts": len(texts), "seconds": round(time.perf_counter() - started, 2)}
    index = SplitIndex.read(ws.prepared, "train")
    stored = 0
    with atomic_dir(ws.augmented) as tmp:
        write_json(
            tmp / POLICY_FILE,
            {
                "online": True,
                "offline_copies": cfg.offline_copies,
                "image_size": meta["image_shape"][0],
                "settings": cfg.model_dump(mode="json"),
            },
        )
        if cfg.offline_copies:
            write_json(tmp / "meta.json", meta)  # the copies' shape and classes, read with the copies
            stored = write_copies(index, meta["classes"], cfg, tmp / COPIES)
    first_of_class = {}
    for i, label in enumerate(index.labels):
        first_of_class.setdefault(int(label), i)
    shown = sorted(first_of_class.items())[: cfg.preview_images]
    save_preview(index.images([i for _, i in shown]), [meta["classes"][c] for c, _ in shown], cfg, ws.augment_preview)
    index.close()
    summary = {
        "train_images": len(index),
        "online": True,
        "offline_copies": cfg.offline_copies,
        "offline_bytes": stored,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if cfg.offline_copies:
        log.info(
            "augment: offline copies cost %.1f MB on disk (and in the DVC cache) and %.1f s; "
            "online augmentation (offline_copies: 0) costs neither",
            stored / 2**20,
            summary["seconds"],
        )
    log.info("augment: %s; preview in %s", summary, ws.augment_preview)
    return summary


def main(params: ParamsFile = PARAMS) -> None:
    """Write the augmentation policy to data/augmented/ and draw plots/augment_preview.png."""
    augment(load_params(params).augment)


if __name__ == "__main__":
    run_stage(main)
