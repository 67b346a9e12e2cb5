"""The base of every stage config (configs.py): unknown keys, NaN and infinity refused; `build` from a
config or dict plus keyword overrides, with a ConfigError naming each wrong field (`describe`); `record`,
what a manifest stores (the config plus CONFIG_VERSION)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer

from .data import Task
from .errors import ConfigError

CONFIG_VERSION = 1
SPLIT_SEED_HELP = ("seed of the task's train/validation/test split, which belongs to the task, not to the run "
                   "(default: the split seed the model's lineage used for this task, else 0)")


def _cli(flag: str | tuple[str, ...] | None = None, **extra) -> dict:
    if flag is not None:
        extra["flag"] = (flag,) if isinstance(flag, str) else flag
    return extra


class Config(BaseModel):
    """Base of every stage config: unknown keys, NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)

    @field_serializer("*", when_used="json")
    @classmethod
    def _task_spec(cls, value):
        return value.spec if isinstance(value, Task) else value

    @classmethod
    def build(cls, config: "Config | dict | None" = None, overrides: dict | None = None, what: str | None = None):
        """The config from an instance or dict, updated by keyword overrides; a ConfigError naming
        each wrong field otherwise."""
        data = config.model_dump(exclude_unset=True) if isinstance(config, BaseModel) else dict(config or {})
        data.update(overrides or {})
        try:
            return cls(**data)
        except ValidationError as e:
            raise ConfigError(describe(e, what or f"{cls.stage_name()} options")) from e

    @classmethod
    def stage_name(cls) -> str:
        return cls.__name__.removesuffix("Config").lower()

    def record(self) -> dict:
        """What the manifest stores: the config as JSON with its version."""
        return {**self.model_dump(mode="json"), "version": CONFIG_VERSION}


def describe(e: ValidationError, what: str, drop: tuple[str, ...] = ()) -> str:
    """One line per wrong field: its path, pydantic's message and the value given."""
    parts = []
    for err in e.errors():
        path = ""
        for part in err["loc"]:
            if isinstance(part, str) and part in drop:
                continue
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}{shown}" if path else msg)
    return f"invalid {what}: " + "; ".join(parts)
