"""Helpers shared by the settings sections."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class SettingsError(ValueError):
    """Settings that cannot work (bad file, unsafe value outside development)."""


class Section(BaseModel):
    """Base of every settings section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def split_csv(value: Any) -> Any:
    """Accept ``"a,b"`` from the environment as well as a real list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def parse_mapping(value: Any) -> Any:
    """Accept ``"name=path,name2=path2"`` from the environment as well as a real mapping."""
    if isinstance(value, str):
        result: dict[str, str] = {}
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, target = item.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(f"expected name=value pairs separated by commas, got {item!r}")
            result[name.strip()] = target.strip()
        return result
    return value
