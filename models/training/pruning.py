"""Pruning of `lab2prod tune` trials inside the train stage: each epoch's validation metric is reported to the
trial in the study's database, and training stops when the study's pruner (Optuna's median rule) says the trial
is hopeless. The tuner (lab2prod/tune/study.py) starts each trial's `dvc exp run` with LAB2PROD_TUNE_TRIAL naming
the study, the trial and the rule; a plain `dvc repro` or `lab2prod run` has no such variable and prunes nothing.
Optuna's own Lightning callback (optuna-integration) does the same report-then-ask; this one also names the
trial's database from the environment, as a stage started by DVC must."""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import lightning as L
import optuna

from lab2prod.core.errors import TrialPruned
from lab2prod.tune.study import PRUNING_ENV, engine_kwargs, median_pruner

log = logging.getLogger("lab2prod")


class TrialPruning(L.Callback):
    """Report `spec["monitor"]` after each validation epoch; raise TrialPruned when the pruner says so."""

    def __init__(self, spec: dict[str, Any]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.monitor, self.number = spec["monitor"], spec["number"]
        pruner = median_pruner(spec["startup_trials"], spec["warmup_epochs"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(spec["storage"], engine_kwargs=engine_kwargs(spec["storage"]))
        study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=pruner)
        self.trial = optuna.trial.Trial(study, spec["trial_id"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        epoch, value = trainer.current_epoch, float(trainer.callback_metrics[self.monitor])
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr("pruned_at_epoch", epoch)
        if trainer.strategy.broadcast(prune):  # every DDP process stops, not only rank 0
            raise TrialPruned(
                f"tune: trial {self.number} pruned after epoch {epoch}: {self.monitor} = {value:.4f} is worse than "
                "the median of the study's earlier trials at that epoch (tune.pruner; not an error)"
            )


def trial_pruning() -> list[L.Callback]:
    """The pruning callback when this stage runs a tuning trial (LAB2PROD_TUNE_TRIAL set), else nothing."""
    raw = os.environ.get(PRUNING_ENV)
    if not raw:
        return []
    spec = json.loads(raw)
    log.info("train: tuning trial %d: pruned on %s by the median rule", spec["number"], spec["monitor"])
    return [TrialPruning(spec)]
