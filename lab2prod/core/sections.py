"""What every settings section shares: unknown keys refused, values frozen; and the architecture-name check
that the train and distill sections use (timm's check is registered into it by models/nets)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

BUILTIN_ARCHITECTURES = ("small_cnn", "resnet")  # models/nets/networks.py ARCHITECTURES; any other name is timm's


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Names other than the built-in ones are checked by whoever can: models/nets/networks.py adds timm's check
# when it is imported (every stage that builds a network imports it). Without it (a serving-only install,
# which has no timm) such a name passes here and is checked where a network is built.
ARCHITECTURE_CHECKS: list[Callable[[str], None]] = []


def check_architecture(name: str) -> str:
    """A built-in network, or a name every registered check accepts (timm's: a timm model)."""
    if name in BUILTIN_ARCHITECTURES:
        return name
    for check in ARCHITECTURE_CHECKS:
        check(name)
    return name
