"""Policy profiles written in YAML (or any mapping), validated with pydantic and built into a
:class:`~router.policy.profile.Profile`::

    name: fast-and-cached
    filters: [healthy, model, {name: staleness, params: {max_staleness_s: 1.0}}]
    scorers:
      - {name: sal, weight: 3}
      - {name: prefix, weight: 1}
    picker: max_score

A plugin is its name or ``{name, params}`` (scorers also take ``weight``, default 1). ``filters``
defaults to ``[healthy, model]``, ``picker`` to ``max_score``. Reading the file is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.policy.plugins.catalogue import make_filter, make_picker, make_scorer
from router.policy.profile import Profile, WeightedScorer


class PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class ScorerConfig(PluginConfig):
    weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)


def _named(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    filters: tuple[PluginConfig, ...] = (PluginConfig(name="healthy"), PluginConfig(name="model"))
    scorers: tuple[ScorerConfig, ...] = ()
    picker: PluginConfig = PluginConfig(name="max_score")

    @field_validator("filters", "scorers", mode="before")
    @classmethod
    def _names_as_plugins(cls, value: object) -> object:
        return [_named(item) for item in value] if isinstance(value, list | tuple) else value

    @field_validator("picker", mode="before")
    @classmethod
    def _name_as_picker(cls, value: object) -> object:
        return _named(value)


def profile_from_config(config: ProfileConfig) -> Profile:
    """Build the plugins; ValueError naming the profile on an unknown plugin or parameter."""
    try:
        filters = tuple(make_filter(f.name, f.params) for f in config.filters)
        scorers = tuple(WeightedScorer(make_scorer(s.name, s.params), s.weight) for s in config.scorers)
        return Profile(config.name, filters, scorers, make_picker(config.picker.name, config.picker.params))
    except ValueError as error:
        raise ValueError(f"profile {config.name!r}: {error}") from None


def profile_from_mapping(data: Mapping[str, object]) -> Profile:
    try:
        config = ProfileConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'profile'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"invalid profile: {problems}") from None
    return profile_from_config(config)


def profile_from_yaml(text: str) -> Profile:
    """Parse one profile from YAML text; ValueError with a one-line reason on any problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"profile YAML does not parse: {error}".replace("\n", " ")) from None
    if not isinstance(data, Mapping):
        raise ValueError(f"a profile is a YAML mapping with name, filters, scorers and picker; got {data!r}")
    return profile_from_mapping(data)
