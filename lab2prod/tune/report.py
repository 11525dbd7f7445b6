"""What a study found: one line per trial as it ends, the Pareto front as a table, reports/tune/ (study.json,
pareto.png, history.png), and `dvc exp apply` of a chosen trial."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from lab2prod.core.dvc import dvc_command, dvc_env
from lab2prod.core.errors import ConfigError, DataError
from lab2prod.core.files import write_json
from lab2prod.core.procs import run_group
from lab2prod.core.tune_settings import TuneConfig

log = logging.getLogger("lab2prod")

REPORT_DIR = Path("reports/tune")


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in ("macs", "params", "bytes"):
        return f"{value:,.0f}"
    return f"{value:.4f}" if name.startswith("val_") else f"{value:.4g}"


def _params(trial: FrozenTrial) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())


def trial_line(trial: FrozenTrial, cfg: TuneConfig, console: Console) -> None:
    """One line per trial: number, params, objectives (or why it failed), elapsed."""
    elapsed = trial.user_attrs.get("duration_s")
    took = f"{elapsed:.0f} s" if elapsed is not None else ""
    if trial.state == TrialState.COMPLETE:
        values = "  ".join(f"{n} [bold]{_value(n, v)}[/]" for n, v in zip(cfg.objectives, trial.values, strict=True))
        outcome = f"[green]{values}[/]"
    elif trial.state == TrialState.PRUNED:
        epoch = trial.user_attrs.get("pruned_at_epoch")
        outcome = f"[yellow]PRUNED[/] after epoch {epoch} (behind the median of earlier trials)"
    else:
        outcome = f"[red]{trial.state.name}[/] {trial.user_attrs.get('fail_reason', '')}"
    console.print(f"trial [bold]{trial.number}[/]  {_params(trial)}  {outcome}  [dim]{took}[/]", highlight=False)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(study.best_trials, key=lambda t: t.number) if complete else []


def pareto_table(study: optuna.Study, cfg: TuneConfig) -> Table:
    table = Table(title=f"Pareto front of study {study.study_name!r}")
    for column in ("trial", "experiment", *cfg.space, *cfg.objectives):
        table.add_column(column, justify="right" if column in cfg.objectives else "left")
    for t in pareto_trials(study):
        params = [
            f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-")) for k in cfg.space
        ]
        values = [_value(n, v) for n, v in zip(cfg.objectives, t.values, strict=True)]
        table.add_row(str(t.number), t.user_attrs.get("experiment", ""), *params, *values)
    return table


def trial_record(trial: FrozenTrial, objectives: list[str]) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "values": dict(zip(objectives, trial.values, strict=True)) if trial.values else None,
        "experiment": trial.user_attrs.get("experiment"),
        "fail_reason": trial.user_attrs.get("fail_reason"),
        "pruned_at_epoch": trial.user_attrs.get("pruned_at_epoch"),
        "epoch_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())} or None,
        "duration_s": trial.user_attrs.get("duration_s"),
        "model": trial.user_attrs.get("model"),
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
    }


def write_reports(study: optuna.Study, cfg: TuneConfig, out: Path) -> dict[str, Path]:
    """study.json (every trial), pareto.png and history.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    record = {
        "study": study.study_name,
        "storage": cfg.storage,
        "objectives": dict(zip(cfg.objectives, cfg.directions(), strict=True)),
        "pareto": [t.number for t in pareto_trials(study)],
        "trials": [trial_record(t, cfg.objectives) for t in trials],
    }
    files = {"study": out / "study.json", "pareto": out / "pareto.png", "history": out / "history.png"}
    write_json(files["study"], record)
    _plots(study, cfg, files)
    return files


def _plots(study: optuna.Study, cfg: TuneConfig, files: dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in pareto_trials(study)}
    names = cfg.objectives
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x_name, y_name = (names[1], names[0]) if len(names) > 1 else ("trial", names[0])
    for on_front, style in ((False, {"c": "tab:gray", "label": "trial"}), (True, {"c": "tab:red", "label": "Pareto"})):
        chosen = [t for t in done if (t.number in front) == on_front]
        xs = [t.values[1] if len(names) > 1 else t.number for t in chosen]
        ax.scatter(xs, [t.values[0] for t in chosen], **style)
        for t, x in zip(chosen, xs, strict=True):
            ax.annotate(str(t.number), (x, t.values[0]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel=x_name, ylabel=y_name, title=f"{study.study_name}: {len(done)} completed trial(s)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(files["pareto"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(len(names), 1, figsize=(6, 2.5 * len(names)), sharex=True, squeeze=False)
    for i, (name, direction) in enumerate(zip(names, cfg.directions(), strict=True)):
        ax = axes[i][0]
        numbers, values = [t.number for t in done], [t.values[i] for t in done]
        ax.plot(numbers, values, "o", label=name)
        best, running = [], None
        for v in values:
            running = v if running is None else (max(running, v) if direction == "maximize" else min(running, v))
            best.append(running)
        ax.step(numbers, best, where="post", label=f"best so far ({direction})")
        ax.set_ylabel(name)
        ax.legend(loc="best", fontsize=8)
    axes[-1][0].set_xlabel("trial")
    fig.tight_layout()
    fig.savefig(files["history"], dpi=100)
    plt.close(fig)


def chosen_trial(study: optuna.Study, which: str) -> FrozenTrial:
    """`which` = a trial number, or "best": the Pareto trial best on the first objective (then the second)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise DataError(f"study {study.study_name!r} has no completed trial to apply")
    if which == "best":
        signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]
        return max(pareto_trials(study), key=lambda t: [s * v for s, v in zip(signs, t.values, strict=True)])
    try:
        number = int(which)
    except ValueError:
        raise ConfigError(f"--apply {which!r}: expected a trial number or 'best'") from None
    match = [t for t in done if t.number == number]
    if not match:
        raise DataError(f"--apply {number}: no completed trial {number}; completed: {[t.number for t in done]}")
    return match[0]


def apply_trial(study: optuna.Study, which: str, project: Path) -> FrozenTrial:
    """`dvc exp apply` the chosen trial's experiment into the workspace."""
    trial = chosen_trial(study, which)
    name = trial.user_attrs["experiment"]
    code = run_group(dvc_command("exp", "apply", name), env=dvc_env(), cwd=project)
    if code != 0:
        raise DataError(
            f"dvc exp apply {name} exited {code}: experiments live in the repository that ran them; "
            f"on another machine `dvc exp pull <remote> {name}` first (docs/tuning.md)"
        )
    log.info("tune: trial %d (%s) applied: %s", trial.number, name, _params(trial))
    return trial
