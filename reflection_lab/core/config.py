"""The stage contract's config half: every `<Stage>Config` is a dataclass with checked fields and `from_profile`.

Why a shared base: the pipeline, the CLI and the notebooks build every stage's settings the same way
(`ScoreConfig.from_profile(profile, max_length=512)`), a wrong type fails at once with a message that
names the field (not deep inside a stage, with a traceback), and the fields that decide a result are
told apart from those that only change speed (`RUNTIME`, left out of the run fingerprint).
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, replace
from pathlib import PurePath
from typing import Any, ClassVar, Literal, Union

from .errors import LabError


class ConfigError(LabError, ValueError, TypeError):
    """A config or profile field with the wrong type or value; the message names the field."""


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, origin) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, val = args if args else (Any, Any)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, val) for k, v in value.items())
    return isinstance(value, tp) if isinstance(tp, type) else True


def _coerce(value: Any, tp: Any) -> Any:
    """Lists for tuple fields (JSON has no tuples) and ints for float fields (1 and 1.0 fingerprint alike)."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    tuples = [o for o in options if typing.get_origin(o) is tuple]
    if isinstance(value, (list, tuple)) and tuples:
        item = (typing.get_args(tuples[0]) or (Any,))[0]
        return tuple(_coerce(v, item) for v in value)
    if isinstance(value, int) and not isinstance(value, bool) and float in options and int not in options:
        return float(value)
    if isinstance(value, PurePath) and str in options:
        return str(value)  # a data file or folder given as a Path
    return value


def check_fields(obj: Any) -> None:
    """Coerce and check every dataclass field against its annotation; raise ConfigError naming the first bad one."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        tp = hints[f.name]
        value = _coerce(getattr(obj, f.name), tp)
        if not _matches(value, tp):
            raise ConfigError(f"{type(obj).__name__}.{f.name} must be {_describe(tp)}, not {value!r}")
        object.__setattr__(obj, f.name, value)  # also on frozen dataclasses


class StageConfig:
    """Mixin for the `<Stage>Config` dataclasses (frozen or not): checked fields, `from_profile`, fingerprint dict.

    Subclasses set STAGE, may list RUNTIME fields (speed, display: not part of the result) and override
    `profile_values` (which profile fields feed which config fields), `adjust` (a default that depends on
    another field) and `validate` (value checks). Configs are frozen: `config.replace(field=value)`.
    """

    STAGE: ClassVar[str] = ""
    RUNTIME: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """Value checks beyond the types (ranges, choices); raise ConfigError naming the field."""

    @classmethod
    def profile_values(cls, profile: Any) -> dict[str, Any]:
        """The config fields a profile decides (a notebook or the CLI may override each one)."""
        return {}

    @classmethod
    def adjust(cls, values: dict[str, Any], profile: Any) -> dict[str, Any]:
        """Defaults that depend on other fields, applied after the profile, its extra and the overrides."""
        return values

    @classmethod
    def from_profile(cls, profile: Any, **overrides: Any) -> Any:
        """The profile's settings for this stage; `profile.extra[STAGE]`, then keyword overrides, win."""
        values = cls.profile_values(profile)
        values.update((getattr(profile, "extra", None) or {}).get(cls.STAGE, {}))
        values.update(overrides)
        values = cls.adjust(values, profile)
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The settings the stage's result depends on: its fingerprint's config, or what that is derived from
        (reflect fingerprints the resolved teacher's description, infer the resolved student and adapter)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUNTIME}  # type: ignore[arg-type]

    def runtime(self) -> dict[str, Any]:
        """The settings that change speed or display only."""
        return {name: getattr(self, name) for name in self.RUNTIME}

    def replace(self, **changes: Any) -> Any:
        return replace(self, **changes)  # type: ignore[type-var]
