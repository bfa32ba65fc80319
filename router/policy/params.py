"""Checking user-given parameters (from YAML, the command line or code) against typed defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

ParamValue = bool | int | float | str


def parameter_defaults(factory: Callable[..., object]) -> dict[str, ParamValue]:
    """The keyword parameters of ``factory`` (a plugin class) and their defaults."""
    defaults: dict[str, ParamValue] = {}
    for name, parameter in inspect.signature(factory).parameters.items():
        if isinstance(parameter.default, bool | int | float | str):
            defaults[name] = parameter.default
    return defaults


def checked_params(
    owner: str, given: Mapping[str, object] | None, defaults: Mapping[str, ParamValue]
) -> dict[str, ParamValue]:
    """``defaults`` overridden by ``given``; ValueError on an unknown name or a value of the wrong type."""
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            choices = ", ".join(sorted(defaults)) if defaults else "none"
            raise ValueError(f"{owner}: unknown parameter {key!r}; parameters: {choices}")
        merged[key] = _coerced(owner, key, value, defaults[key])
    return merged


def _coerced(owner: str, key: str, value: object, default: ParamValue) -> ParamValue:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ValueError(
        f"{owner}: parameter {key!r} must be a {type(default).__name__} (like {default!r}), got {value!r}"
    )
