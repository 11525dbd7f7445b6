"""Options shared by several `lab2prod` commands: `--set KEY=VALUE` and its validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from lab2prod.core.errors import ConfigError
from lab2prod.core.settings import apply_overrides, load_params, validate_params

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-S",
        metavar="KEY=VALUE",
        help="Change a setting for this run only, e.g. -S train.epochs=5 (repeatable; values are YAML).",
    ),
]


def parse_overrides(pairs: list[str] | None, params_file: Path = Path("params.yaml")) -> dict[str, Any]:
    """`["train.epochs=5"]` -> `{"train.epochs": 5}`, validated against the settings file first."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
        overrides[key.strip()] = yaml.safe_load(value)
    if overrides and params_file.exists():
        load_params(params_file, overrides)  # a ConfigError naming the file, the key and the value
    elif overrides:
        validate_params(apply_overrides({}, overrides), f"--set {' '.join(pairs or [])}")
    return overrides
