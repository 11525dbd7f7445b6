"""The `lab2prod` command: everything a user does, one subcommand each. `lab2prod --help` lists them.

Heavy imports (torch, Prefect, DVC) happen inside the commands that need them, so `--help` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.cli.feedback import app as feedback_app
from lab2prod.cli.options import SetOpt, parse_overrides
from lab2prod.cli.prefect import app as prefect_app
from lab2prod.cli.prefect import server_url, use_prefect
from lab2prod.cli.registry import app as registry_app
from lab2prod.cli.registry import registry_location
from lab2prod.cli.runs import runs
from lab2prod.cli.tune import tune
from lab2prod.core.console import stage_entry
from lab2prod.core.dvc import WorkspaceSnapshot, dvc_command, dvc_env
from lab2prod.core.errors import ConfigError, DataError
from lab2prod.core.procs import run_group
from lab2prod.core.settings import apply_overrides, load_params, validate_params

log = logging.getLogger("lab2prod")

app = typer.Typer(
    name="lab2prod",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    help="From a folder of labelled images or texts to a trained, compressed, ONNX-exported classifier that is "
    "registered, gated and retrained. Run it in the project root (where dvc.yaml and params.yaml are).",
)
app.add_typer(registry_app, name="registry")
app.add_typer(prefect_app, name="prefect")
app.add_typer(feedback_app, name="feedback")
app.command("tune")(tune)
app.command("runs")(runs)


@app.command()
@stage_entry
def run(
    stages: Annotated[
        list[str] | None, typer.Argument(help="Stages to bring up to date (default: all of them).")
    ] = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Run the stages even if DVC sees no change.")] = False,
    prefect: Annotated[
        bool,
        typer.Option(help="Run it as the training-pipeline Prefect flow, once, here (no deployment or worker needed)."),
    ] = False,
) -> None:
    """Run the pipeline with DVC (`dvc repro`): only the stages whose inputs, code or settings changed.

    With --set the run is a DVC experiment (`dvc exp run -S ...`): `dvc exp show` compares it with every
    other. As `dvc exp run` does, a run that succeeds leaves its values in params.yaml (`git checkout
    params.yaml` goes back); one that fails puts params.yaml, dvc.lock and every output back as they were.
    Without --set, a stage that fails gets its previous outputs back (DVC deletes them before it runs).
    With --prefect the same stages run as Prefect tasks (retries, artifacts, run log), still through DVC.
    """
    overrides = parse_overrides(set_)
    if prefect:
        if stages or force:
            raise ConfigError("--prefect runs every stage through DVC; it takes no STAGE and no --force")
        use_prefect()
        from flows.pipeline import training_pipeline

        training_pipeline(overrides=overrides or None)
        return
    if overrides:
        args = ["exp", "run", *[a for k, v in overrides.items() for a in ("-S", f"{k}={json.dumps(v)}")]]
    else:
        args = ["repro"]
    args += (["--force"] if force else []) + list(stages or [])
    log.info("lab2prod run: dvc %s", " ".join(args))
    if not (Path.cwd() / "dvc.yaml").is_file():
        raise ConfigError(f"no dvc.yaml in {Path.cwd()}: run `lab2prod run` in the project root")
    snapshot = WorkspaceSnapshot(Path.cwd())  # a failed run must leave the workspace as it found it
    try:
        code = run_group(dvc_command(*args), env=dvc_env())
        if code != 0 and overrides:
            restored = snapshot.restore()
            log.error(
                "lab2prod run: the experiment failed (exit %d); %s",
                code,
                "params.yaml, dvc.lock and every output are back as they were"
                if restored == 0
                else f"params.yaml and dvc.lock are back, but `dvc checkout` exited {restored}: run it again",
            )
        elif code != 0:
            restored = snapshot.restore(missing_only=True)
            log.error(
                "lab2prod run: dvc repro failed (exit %d); %s",
                code,
                "the outputs of the stage that failed are back as dvc.lock records them (what the stages before "
                "it wrote is kept: `dvc status` tells what is left to run)"
                if restored == 0
                else f"`dvc checkout` exited {restored} bringing back the failed stage's outputs: run it again",
            )
    finally:
        snapshot.discard()
    raise typer.Exit(code)


@app.command()
@stage_entry
def predict(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Image files and/or folders (a text model: .txt files); local or URLs.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="ONNX file to use (default: the registry's champion).")] = None,
    registry: Annotated[
        str | None, typer.Option(help="Registry whose champion to use (default: retrain.registry_dir).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Classes per image in the CSV (the table shows the best).")] = 1,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the predictions to this CSV file.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to classify (repeatable).")] = None,
) -> None:
    """Classify images (or texts) with the champion model (or --model); every unreadable file is listed with its
    reason."""
    from rich.console import Console
    from rich.table import Table

    from lab2prod.data.images import IMAGE_SUFFIXES
    from lab2prod.data.text import TEXT_SUFFIXES
    from lab2prod.registry.store import champion, champion_model
    from lab2prod.serve.predict import Classifier, classify, classify_texts, image_files, write_csv

    expected = None
    if model is None:
        where = registry_location(registry)
        model, current = champion_model(where), champion(where)
        if model is None or current is None:
            raise DataError(
                f"registry {where} has no champion yet: run `lab2prod retrain`, or name an ONNX file with --model"
            )
        expected = current["onnx_sha256"]
    classifier = Classifier.load(model, expected)
    if text and classifier.modality != "text":
        raise DataError(f"--text needs a text model; {classifier.source} classifies images")
    suffixes = TEXT_SUFFIXES if classifier.modality == "text" else IMAGE_SUFFIXES
    files = image_files(paths or [], suffixes)
    if not files and not text:
        named, looked = ", ".join(paths or ["(none named)"]), ", ".join(sorted(suffixes))
        raise DataError(f"no {classifier.modality} files in {named} (looked for {looked})")
    top = min(top, len(classifier.classes))
    rows = classify(classifier, files, top=top, progress=True) + classify_texts(classifier, text or [], top)
    bad = sum(1 for r in rows if r["error"])
    if csv_out:
        write_csv(rows, csv_out, top)
        log.info("predict: %d file(s) -> %s", len(rows), csv_out)
    else:
        table = Table("file", "class", "probability", "error")
        for r in rows:
            cls, prob = r["predictions"][0] if r["predictions"] else ("", None)
            table.add_row(r["file"], cls, "" if prob is None else f"{prob:.3f}", r["error"])
        Console().print(table)
    log.info(
        "predict: %d %s(s) classified with %s%s",
        len(rows) - bad,
        classifier.modality,
        classifier.source,
        f"; {bad} file(s) could not be read (reasons in the output)" if bad else "",
    )


@app.command()
@stage_entry
def retrain(set_: SetOpt = None) -> None:
    """Retrain once, now: ingest new data; if there is any, run the pipeline and promote the challenger only if
    it beats the champion (the `scheduled-retrain` flow, without a deployment)."""
    overrides = parse_overrides(set_)
    load_params()  # fail on bad settings before Prefect starts
    use_prefect()
    from flows.retrain import scheduled_retrain

    sys.stdout.write(json.dumps(scheduled_retrain(overrides=overrides or None), indent=2) + "\n")


@app.command()
@stage_entry
def serve(
    model: Annotated[
        str | None,
        typer.Option(help="Serve this ONNX file (path or URL) instead of following the registry's champion."),
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="Registry whose champion to serve (default: retrain.registry_dir).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Server processes (default: serve.workers).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn's access log).")] = False,
    token_file: Annotated[
        str | None, typer.Option(help="File holding the token POST /feedback needs (or set LAB2PROD_TOKEN).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Serve the champion over HTTP: `POST /predict`, `POST /feedback`, `/healthz`, `/readyz`, `/metrics`,
    OpenAPI docs on `/docs`.

    Requests arriving together share one model call (micro-batching). A promotion or rollback in the registry
    is picked up without a restart, after its sha256 and a smoke prediction check out; a broken file is refused
    and the previous model keeps serving. A sample of the predictions goes to the prediction log
    (`serve.log_dir`). Settings: the `serve:` section of params.yaml. Beyond loopback (--host 0.0.0.0),
    POST /feedback needs `Authorization: Bearer <token>` (LAB2PROD_TOKEN or --token-file); without a token
    it is refused (401) and reads are served.
    """
    from lab2prod.serve.app import serve as run_server
    from lab2prod.serve.auth import TOKEN_FILE_ENV

    if token_file:
        os.environ[TOKEN_FILE_ENV] = token_file  # read by each worker process; the token stays out of argv

    overrides = parse_overrides(set_)
    params = (
        load_params(overrides=overrides)
        if Path("params.yaml").exists()
        else validate_params(apply_overrides({}, overrides))
    )
    flags = {"host": host, "port": port, "workers": workers}
    cfg = params.serve.model_copy(update={k: v for k, v in flags.items() if v is not None})
    if model is None and params.serve.model != "champion":
        model = params.serve.model
    where = None if model else registry_location(registry)
    log.info(
        "serve: %s on http://%s:%d (%d worker(s))", model or f"champion of {where}", cfg.host, cfg.port, cfg.workers
    )
    run_server(cfg, model, where, access_log=access_log)


@app.command()
@stage_entry
def plots(
    targets: Annotated[
        list[str] | None, typer.Argument(help="Plots to show (default: every plot in dvc.yaml).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the page (index.html).")] = Path("dvc_plots"),
) -> None:
    """`dvc plots show` as a page that renders offline: training curves, confusion matrices, augmentation previews.

    DVC's own page loads its plotting libraries from a CDN (blank without internet); this one carries them
    inlined (vl-convert-python's bundle of Vega, Vega-Lite and vega-embed). Open OUT/index.html in a browser.
    """
    from lab2prod.core.plots import show_offline

    page = show_offline(out, targets)
    log.info("plots: %s (renders offline)", page)
    sys.stdout.write(f"{page}\n")


@app.command()
@stage_entry
def monitor(
    trigger: Annotated[
        bool, typer.Option(help="Start the retraining deployment if needed (needs a Prefect server with it deployed).")
    ] = False,
) -> None:
    """Check the served champion for drift (its prediction log vs its test split) and count new feedback.

    Writes reports/drift/drift.json and drift.png and prints the verdict. With --trigger it runs as the
    `drift-monitor` Prefect flow and starts `scheduled-retrain` when the check asks for it.
    """
    from lab2prod.monitor import check as monitoring

    if trigger:
        server_url()
        from flows.monitor import drift_monitor

        report = drift_monitor()
    else:
        report = monitoring.check(load_params(), Path.cwd())
    sys.stdout.write(monitoring.markdown(report) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
