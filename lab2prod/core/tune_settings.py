"""The tune section of the settings: the search space of `lab2prod tune` (dotted settings keys, each a range or a
list of choices), its budget, its objectives and where the study lives. Read by the tuner only: no dvc.yaml stage
lists it, so changing it reruns nothing. Every key of the space is checked against the settings schema
(`check_space`, called by lab2prod/core/settings.py's Params) and every bound or choice against that key's type."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator

from lab2prod.core.sections import Section

# objective name -> its direction; validation accuracy comes from the train stage's DVCLive metrics (never the test
# split), the others from metrics/benchmark.json's entry for the deployable default (export stage)
OBJECTIVES: dict[str, Literal["maximize", "minimize"]] = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "macs": "minimize",
    "latency_ms": "minimize",
    "params": "minimize",
    "bytes": "minimize",
}

Choice = bool | int | float | str | None


class RangeSpec(Section):
    low: float
    high: float
    log: bool = False  # sample on a log scale (learning rates)
    int: bool = False  # integers only (low and high must be whole numbers)

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.low < self.high:
            raise ValueError(f"low = {self.low:g} must be below high = {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0 (got {self.low:g})")
        if self.int and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int = true needs whole-number bounds (got {self.low:g}..{self.high:g})")
        return self


class ChoiceSpec(Section):
    choices: Annotated[list[Choice], Field(min_length=1)]


def _spec_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "choices" if "choices" in value else "range"
    return "choices" if isinstance(value, ChoiceSpec) else "range"


Spec = Annotated[Annotated[RangeSpec, Tag("range")] | Annotated[ChoiceSpec, Tag("choices")], Discriminator(_spec_kind)]


class TuneConfig(Section):
    space: dict[str, Spec] = {}  # dotted settings key -> {low, high, log, int} or {choices}
    trials: Annotated[int, Field(ge=1, le=100_000)] = 20  # finished trials of the study, across resumes and machines
    timeout_s: Annotated[float, Field(gt=0.0)] = 1800.0  # no new trial starts after this long (per invocation)
    objectives: Annotated[list[str], Field(min_length=1, max_length=3)] = ["val_accuracy", "macs"]
    storage: str = "sqlite:///.lab2prod/tune.db"  # any Optuna RDB URL (SQLAlchemy): machines sharing it share a study
    study: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "lab2prod"
    seed: int | None = None  # of the sampler (None: random)
    # Stopping hopeless trials in training: Optuna's median rule on the validation metric of each epoch (a trial
    # worse than the median of earlier trials at the same epoch stops there). Optuna prunes single-objective
    # studies only: with `objectives: [val_accuracy]` or `[val_loss]`; a study with a second objective runs
    # every trial to the end (a small, less accurate model can still be on the Pareto front).
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: Annotated[int, Field(ge=0)] = 3  # finished trials before any is pruned
    pruner_warmup_epochs: Annotated[int, Field(ge=0)] = 2  # epochs a trial always trains before it can be pruned

    @model_validator(mode="after")
    def _known_objectives(self) -> TuneConfig:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise ValueError(f"objectives {unknown} unknown; choose from {sorted(OBJECTIVES)}")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives {self.objectives} name one twice")
        return self

    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    def pruned_on(self) -> str | None:
        """The per-epoch metric trials are pruned on (Lightning's name for it), or None: no pruning."""
        if self.pruner == "none" or len(self.objectives) != 1:
            return None
        return {"val_accuracy": "val/acc", "val_loss": "val/loss"}.get(self.objectives[0])


def leaf_annotation(schema: type[BaseModel], dotted: str) -> Any:
    """The type annotation of settings key `dotted` ("train.lr") in `schema`; a ValueError naming the key when it
    is no setting, names a whole section or lies in the tune section itself."""
    if dotted.split(".")[0] == "tune":
        raise ValueError(f"tune.space: {dotted!r}: the tune section cannot tune itself")
    node: type[BaseModel] = schema
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = node.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the settings"
            raise ValueError(
                f"tune.space: {dotted!r} is no setting ({where} has no key {part!r}; "
                f"it has {', '.join(sorted(fields))})"
            )
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                raise ValueError(f"tune.space: {dotted!r} is a section; name one of its keys")
            return fields[part].rebuild_annotation()
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise ValueError(f"tune.space: {dotted!r} is no setting ({'.'.join(parts[: i + 1])} is not a section)")
        node = annotation
    raise ValueError(f"tune.space: {dotted!r} is no setting")  # pragma: no cover (an empty key)


def check_space(space: dict[str, RangeSpec | ChoiceSpec], schema: type[BaseModel]) -> None:
    """Every key of the space is a setting of `schema`, and every bound or choice a valid value of it."""
    for key, spec in space.items():
        adapter = TypeAdapter(leaf_annotation(schema, key))
        values = spec.choices if isinstance(spec, ChoiceSpec) else [spec.low, spec.high]
        if isinstance(spec, RangeSpec) and spec.int:
            values = [int(v) for v in values]
        for value in values:
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"tune.space: {key} = {value!r} is not a valid value: {reason}") from None
