"""`lab2prod tune`: an Optuna study whose trials are DVC experiments (lab2prod/tune/ does the work)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.cli.options import SetOpt, parse_overrides
from lab2prod.core.console import stage_entry
from lab2prod.core.settings import load_params

log = logging.getLogger("lab2prod")


@stage_entry
def tune(
    trials: Annotated[
        int | None, typer.Option(min=1, help="Finished trials the study should have (default: tune.trials).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Start no trial after this many seconds (default: tune.timeout_s).")
    ] = None,
    apply: Annotated[
        str | None,
        typer.Option(
            help="Run no trial: `dvc exp apply` trial N's experiment, or 'best' (the Pareto trial best on the "
            "first objective)."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Tune settings with Optuna: each trial is a DVC experiment (`dvc exp run --name <study>-t<N> -S ...`).

    The search space, budget, objectives (validation accuracy up, the deployable model's MACs or latency down)
    and the study's storage are the `tune:` section of params.yaml. A killed study resumes where it stopped;
    several machines running `lab2prod tune` against one `tune.storage` database share the study. At the end
    the Pareto front is printed and reports/tune/ holds study.json, pareto.png and history.png; the workspace
    is left as it was (`--apply best` or `--apply N` brings a trial's settings and outputs in). With a single
    objective (val_accuracy or val_loss) a trial behind the median of earlier trials at the same epoch stops
    training there (tune.pruner). --set changes a setting for every trial (or, for tune.* keys, the study itself).
    """
    from optuna.trial import TrialState
    from rich.console import Console

    from lab2prod.tune.report import REPORT_DIR, apply_trial, pareto_table, trial_line, write_reports
    from lab2prod.tune.study import open_study, optimize

    overrides = parse_overrides(set_)
    params = load_params(overrides=overrides)
    cfg, project, console = params.tune, Path.cwd(), Console()
    study = open_study(cfg, project)
    if apply is not None:
        apply_trial(study, apply, project)
        return
    base = {k: v for k, v in overrides.items() if not k.startswith("tune.")}
    budget, limit = trials or cfg.trials, timeout or cfg.timeout_s
    log.info(
        "tune: study %r in %s: up to %d finished trial(s), %.0f s; space %s",
        cfg.study,
        cfg.storage,
        budget,
        limit,
        ", ".join(cfg.space),
    )
    try:
        ran = optimize(study, cfg, project, base, budget, limit, lambda t: trial_line(t, cfg, console))
    finally:
        files = write_reports(study, cfg, project / REPORT_DIR)
        console.print(pareto_table(study, cfg))
        log.info("tune: %s, %s, %s", *(str(f.relative_to(project)) for f in files.values()))
    if ran and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.error("tune: no trial of study %r completed (reasons in %s)", cfg.study, files["study"])
        raise typer.Exit(1)
