"""Helpers shared by the settings sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# how a knowledge base is searched (retrieval.mode, rag and eval overrides, the API's field)
SearchMode = Literal["dense", "keyword", "hybrid"]


class SettingsError(ValueError):
    """Settings that cannot work (bad file, unsafe value outside development)."""


class Section(BaseModel):
    """Base of every settings section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def nest_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"llm.model": x}`` -> ``{"llm": {"model": x}}`` (``None`` values dropped: a flag that
    was not given does not mask a lower source)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        target = out
        *parents, last = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


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
