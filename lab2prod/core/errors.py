"""The errors a user can act on. Each message says what was wrong, where, and what to do.

`console.stage_entry` turns any of these into one log line and exit code 2 (settings or data), 1 (a model that
failed its checks) or 3 (a tuning trial pruned), never a traceback.
"""

from __future__ import annotations


class Lab2ProdError(Exception):
    """Base of every error whose message is meant for the user as it is."""

    exit_code = 2


class ConfigError(Lab2ProdError, ValueError):
    """A settings file that cannot be used; the message says where and what to change."""


class DataError(Lab2ProdError, ValueError):
    """Input data that cannot be used; the message names the file or class and what to do."""


class ParityError(Lab2ProdError, RuntimeError):
    """An ONNX model does not compute what its source model computes."""

    exit_code = 1


class RegistryError(Lab2ProdError, RuntimeError):
    """The registry cannot do what was asked; the message says what is missing or wrong."""


class TrialPruned(Lab2ProdError):
    """`lab2prod tune` stopped this trial's training: its validation metric fell behind the study's earlier trials
    at the same epoch (tune.pruner). Not a fault: the tuner records the trial as pruned and goes on."""

    exit_code = 3
