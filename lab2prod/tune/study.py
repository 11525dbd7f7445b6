"""`lab2prod tune`: an Optuna study whose trials are DVC experiments.

Each trial samples the `tune.space` keys, runs `dvc exp run --name <study>-t<number> -S key=value ...` (in its own
process group, as `lab2prod run` does), and reads its objectives from what the run wrote: validation accuracy
from the train stage's DVCLive metrics, the deployable model's MACs or batch-1 latency from the export stage's
metrics/benchmark.json. A failed experiment is a FAIL trial with its reason, and the workspace is put back as it
was. The study lives in an RDB (`tune.storage`): a killed run resumes where it stopped, and several machines
pointing at one database work on one study. No torch here: the training happens inside DVC's stages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lab2prod.core.dvc import WorkspaceSnapshot, dvc_command, dvc_env
from lab2prod.core.errors import ConfigError, DataError
from lab2prod.core.layout import Workspace
from lab2prod.core.procs import run_group
from lab2prod.core.settings import load_params
from lab2prod.core.tune_settings import ChoiceSpec, RangeSpec, TuneConfig

log = logging.getLogger("lab2prod")

HEARTBEAT_S = 30  # a running trial's heartbeat; one silent for GRACE_S belongs to a dead process (any machine)
GRACE_S = 120
INTERRUPTED = "interrupted: the process running it ended before the experiment finished"
STOPPED_CODES = {130, 143, 252}  # SIGINT/SIGTERM through a shell, DVC's own "interrupted": stop the study too
PRUNING_ENV = "LAB2PROD_TUNE_TRIAL"  # read by models/training/pruning.py in the trial's train stage


def engine_kwargs(url: str) -> dict[str, Any] | None:
    """SQLAlchemy engine arguments for a study's database: SQLite waits up to 60 s for a lock (a trial's train
    stage and the tuner write to it at once)."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None


def median_pruner(startup_trials: int, warmup_epochs: int) -> optuna.pruners.MedianPruner:
    """The rule the tuner and each trial's train stage share: behind the median of earlier trials at an epoch."""
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)


def storage_url(url: str, project: Path) -> str:
    """A relative SQLite path is the project's (`sqlite:///.lab2prod/tune.db`); its folder is created."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return url
    path = Path(url[len(prefix) :])
    path = path if path.is_absolute() else project / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def open_study(cfg: TuneConfig, project: Path) -> optuna.Study:
    """The study named `cfg.study` in `cfg.storage`, created on first use, loaded afterwards. A seeded sampler
    is seeded with tune.seed + the trials already in the study: a resumed study does not replay its first picks."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print
    url = storage_url(cfg.storage, project)
    engine = engine_kwargs(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
        except Exception as exc:  # a bad URL, a missing driver, an unreachable server
            raise ConfigError(f"tune.storage = {cfg.storage!r}: cannot open it: {exc}") from None
        study = optuna.create_study(
            study_name=cfg.study, storage=storage, directions=cfg.directions(), load_if_exists=True
        )
    seed = None if cfg.seed is None else cfg.seed + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    study.pruner = pruner(cfg)
    wanted = [optuna.study.StudyDirection[d.upper()] for d in cfg.directions()]
    if list(study.directions) != wanted:
        have = [d.name.lower() for d in study.directions]
        raise ConfigError(
            f"study {cfg.study!r} in {cfg.storage} optimises {have}, but tune.objectives {cfg.objectives} "
            f"need {cfg.directions()}: name another study (tune.study) or keep its objectives"
        )
    return study


def pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """The study's pruner: the median rule where the study can prune (TuneConfig.pruned_on), else none."""
    if cfg.pruned_on() is None:
        return optuna.pruners.NopPruner()
    return median_pruner(cfg.pruner_startup_trials, cfg.pruner_warmup_epochs)


def pruning_env(cfg: TuneConfig, project: Path, trial: optuna.Trial) -> dict[str, str]:
    """What the train stage of a trial's experiment needs to report each epoch to the study and to stop when the
    pruner says so (models/training/pruning.py): an environment variable DVC passes on to the stage. Empty where
    the study does not prune."""
    if cfg.pruned_on() is None:
        return {}
    spec = {
        "storage": storage_url(cfg.storage, project),
        "study": cfg.study,
        "trial_id": trial._trial_id,
        "number": trial.number,
        "monitor": cfg.pruned_on(),
        "startup_trials": cfg.pruner_startup_trials,
        "warmup_epochs": cfg.pruner_warmup_epochs,
    }
    return {PRUNING_ENV: json.dumps(spec)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL (interrupted) the RUNNING trials whose process is gone: on this machine, a dead pid; anywhere,
    a heartbeat silent for GRACE_S. They are not counted as finished and never block a new trial."""
    storage, host, failed = study._storage, socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and attrs.get("pid") != os.getpid() and not _alive(int(attrs.get("pid", 0))):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
                storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                failed.append(trial.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return failed + sorted(before - after)


def counts_as_finished(trial: FrozenTrial) -> bool:
    """Finished trials use up the budget: completed, pruned, or failed experiments; not interrupted ones."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (
        trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs and not trial.user_attrs.get("interrupted")
    )


def sample(trial: optuna.Trial, space: dict[str, RangeSpec | ChoiceSpec]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, ChoiceSpec):
            values[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.int:
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
        else:
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    return values


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: the experiment ran, but did not write it") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None


def read_objectives(project: Path, names: list[str]) -> tuple[list[float], dict[str, Any]]:
    """The objective values a finished run wrote (its validation metrics and its deployable model's benchmark),
    and what they were read from."""
    ws = Workspace.under(project)
    train, bench = _json(ws.train_metrics / "metrics.json"), _json(ws.benchmark)
    variant = bench.get("deployable_default") or bench.get("fastest")
    model = (bench.get("variants") or {}).get(variant)
    if model is None:
        raise DataError(f"{ws.benchmark}: no benchmarked deployable model (deployable_default / fastest)")
    val = train.get("val") or {}
    source = {
        "val_accuracy": val.get("acc"),
        "val_loss": val.get("loss"),
        "macs": model.get("macs"),
        "latency_ms": model.get("batch1_p50_ms"),
        "params": model.get("params"),
        "bytes": model.get("bytes"),
    }
    missing = [n for n in names if source.get(n) is None]
    if missing:
        raise DataError(f"the run wrote no {missing} (metrics/train/metrics.json val.*, {ws.benchmark})")
    return [float(source[n]) for n in names], {"model": variant}


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for the trial while its experiment runs, so other machines see it alive."""
    storage, stop = study._storage, threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; GRACE_S allows for several
                storage.record_heartbeat(trial._trial_id)

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, daemon=True, name="tune-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def experiment_name(study: str, number: int) -> str:
    return f"{study}-t{number}"


def run_trial(
    study: optuna.Study, cfg: TuneConfig, project: Path, base: dict[str, Any], snapshot: WorkspaceSnapshot
) -> tuple[FrozenTrial, bool]:
    """One trial: sample, `dvc exp run`, read its objectives, tell the study. Returns the trial and whether the
    study should go on (False after Ctrl-C / SIGTERM)."""
    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    values = sample(trial, cfg.space)
    name = experiment_name(cfg.study, trial.number)
    trial.set_user_attr("experiment", name)
    try:  # rules across keys (min_epochs <= max_epochs, ...): a trial DVC would refuse fails here, at once
        load_params(project / "params.yaml", {**base, **values})
    except ConfigError as exc:
        trial.set_user_attr("fail_reason", str(exc).replace("\n", " "))
        return study.tell(trial, state=TrialState.FAIL), True
    sets = [a for k, v in {**base, **values}.items() for a in ("-S", f"{k}={json.dumps(v)}")]
    args = dvc_command("exp", "run", "--name", name, *sets)
    log.info("tune: trial %d: dvc %s", trial.number, " ".join(args[3:]))
    started = time.monotonic()
    stopped: list[int] = []
    with heartbeat(study, trial):
        env = {**dvc_env(), **pruning_env(cfg, project, trial)}
        code = run_group(args, env=env, cwd=project, on_signal=stopped.append)
    trial.set_user_attr("duration_s", round(time.monotonic() - started, 1))
    go_on, reason = True, None
    pruned_at = study._storage.get_trial(trial._trial_id).user_attrs.get("pruned_at_epoch")
    if code != 0 and pruned_at is not None and not stopped:  # the train stage stopped it (TrialPruned)
        restored = snapshot.restore()
        if restored != 0:
            trial.set_user_attr("fail_reason", f"pruned; `dvc checkout` exited {restored} restoring: run it again")
        log.info("tune: trial %d pruned after epoch %d", trial.number, pruned_at)
        return study.tell(trial, state=TrialState.PRUNED), True
    if code == 0:
        try:
            objective_values, info = read_objectives(project, cfg.objectives)
        except DataError as exc:
            reason = str(exc)
        else:
            for key, value in info.items():
                trial.set_user_attr(key, value)
            return study.tell(trial, objective_values), not stopped
    else:
        go_on = not stopped and code not in STOPPED_CODES and code >= 0
        reason = f"dvc exp run exited {code}" + ("" if go_on else " (stopped)")
    restored = snapshot.restore()  # as `lab2prod run -S` does: params.yaml, dvc.lock and the outputs back
    if restored != 0:
        reason += f"; the workspace is back but `dvc checkout` exited {restored}: run it again"
    trial.set_user_attr("fail_reason", reason)
    return study.tell(trial, state=TrialState.FAIL), go_on


def optimize(
    study: optuna.Study,
    cfg: TuneConfig,
    project: Path,
    base: dict[str, Any],
    trials: int,
    timeout_s: float,
    report: Callable[[FrozenTrial], None],
) -> int:
    """Run trials until `trials` of the study are finished (across resumes and machines) or `timeout_s` has
    passed (a running trial is not cut short). The workspace ends as it began. Returns the trials run here."""
    clash = sorted(set(base) & set(cfg.space))
    if clash:
        raise ConfigError(f"--set names {clash}, which tune.space samples: drop one of the two")
    if not cfg.space:
        raise ConfigError("tune.space is empty: name at least one setting to tune (see params.yaml's tune section)")
    dead = fail_dead_trials(study)
    if dead:
        log.warning("tune: trial(s) %s were left running by a process that ended: marked failed (interrupted)", dead)
    start, ran = time.monotonic(), 0
    snapshot = WorkspaceSnapshot(project)
    try:
        while True:
            fail_dead_trials(study)
            all_trials = study.get_trials(deepcopy=False)
            finished = sum(counts_as_finished(t) for t in all_trials)
            running = sum(t.state == TrialState.RUNNING for t in all_trials)  # other processes' (machines')
            if finished + running >= trials:
                log.info(
                    "tune: %d trial(s) finished, %d running elsewhere: the budget of %d", finished, running, trials
                )
                break
            if time.monotonic() - start >= timeout_s:
                log.info("tune: %.0f s passed (timeout): no new trial", time.monotonic() - start)
                break
            frozen, go_on = run_trial(study, cfg, project, base, snapshot)
            ran += 1
            report(frozen)
            if not go_on:
                break
    finally:
        restored = snapshot.restore()  # the last trial's values stay in its experiment, not in params.yaml
        snapshot.discard()
        if restored != 0:
            log.error("tune: params.yaml and dvc.lock are back, but `dvc checkout` exited %d: run it again", restored)
    return ran
