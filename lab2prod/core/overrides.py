"""Dotted-key overrides of raw settings (`{"train.epochs": 5}`): the `-S KEY=VALUE` of every command."""

from __future__ import annotations

import json
from typing import Any

from lab2prod.core.errors import ConfigError


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree["a"]["b"] = value` for `dotted = "a.b"`, in place, creating missing sections."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a section.")
    node[leaf] = value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of raw params with dotted-key overrides (`{"train.epochs": 5}`) applied."""
    merged = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        set_dotted(merged, dotted, value)
    return merged
