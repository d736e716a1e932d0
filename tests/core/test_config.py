"""Stage configs: fields checked against their types, `from_profile` with overrides, the fingerprint dict."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reflection_lab.core.config import ConfigError, StageConfig
from reflection_lab.profiles import get_profile, parse_assignments


@dataclass(frozen=True)
class Example(StageConfig):
    STAGE = "example"
    RUNTIME = ("batch",)

    steps: int = 1
    rate: float = 1e-3
    names: tuple[str, ...] = ()
    pairs: tuple[tuple[str, ...], ...] | None = None
    label: str | None = None
    batch: int = 8

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"Example.steps must be at least 1, not {self.steps}")


def test_fields_are_checked_and_coerced():
    c = Example(rate=1, names=["a", "b"], pairs=[["x", "y"]])
    assert c.rate == 1.0 and isinstance(c.rate, float) and c.names == ("a", "b") and c.pairs == (("x", "y"),)
    for bad, field in [({"steps": "abc"}, "steps"), ({"steps": True}, "steps"), ({"rate": "fast"}, "rate"),
                       ({"names": [1]}, "names"), ({"label": 3}, "label"), ({"steps": 0}, "steps")]:
        with pytest.raises(ConfigError, match=f"Example.{field}"):
            Example(**bad)


def test_from_profile_takes_extra_then_overrides_and_refuses_unknown_names():
    class P:
        extra = {"example": {"steps": 5, "label": "from extra"}}

    assert Example.from_profile(P()) == Example(steps=5, label="from extra")
    assert Example.from_profile(P(), label="override").label == "override"
    with pytest.raises(ConfigError, match=r"unknown Example field\(s\) \['nope'\]"):
        Example.from_profile(P(), nope=1)


def test_runtime_fields_stay_out_of_the_fingerprint():
    c = Example(batch=2)
    assert "batch" not in c.as_dict() and c.runtime() == {"batch": 2}
    assert c.replace(batch=64).as_dict() == c.as_dict() != c.replace(steps=2).as_dict()


def test_profiles_are_checked_too_and_cli_assignments_parse_as_json():
    with pytest.raises(ConfigError, match="Profile.n_samples"):
        get_profile("ci", n_samples="abc")
    with pytest.raises(ConfigError, match="Profile.dtype|Profile.max_steps"):
        get_profile("ci", max_steps="abc")
    assert parse_assignments(["n_samples=8", "template=plain", "top_k_percent=null"]) == {
        "n_samples": 8, "template": "plain", "top_k_percent": None}
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        parse_assignments(["n_samples"])


def test_stage_configs_are_frozen_and_their_special_defaults_see_the_profiles_extra(tmp_path):
    from dataclasses import FrozenInstanceError, replace

    from reflection_lab.data import DataConfig
    from reflection_lab.inference import InferConfig
    from reflection_lab.reflect import ReflectConfig

    prof = get_profile("ci", extra={"reflect": {"teacher": "local:tiny-llama"}, "infer": {"use_adapter": False}})
    assert ReflectConfig.from_profile(prof).max_tokens == prof.max_new_tokens  # a local teacher, set in extra
    assert ReflectConfig.from_profile(get_profile("ci")).max_tokens == 1024
    assert InferConfig.from_profile(prof).student == prof.student  # the base student, set in extra
    c = DataConfig(train=tmp_path / "my.jsonl")  # a Path is taken as its text
    assert c.train == str(tmp_path / "my.jsonl")
    with pytest.raises(FrozenInstanceError):
        c.n_samples = 3
    with pytest.raises(ConfigError, match="DataConfig.n_samples"):
        replace(c, n_samples=0)
