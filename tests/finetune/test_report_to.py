"""Stage 05's `report_to`: off by default, reachable from --set, a missing logger package named in one line."""

from __future__ import annotations

import importlib.util

import pytest

from reflection_lab.core.config import ConfigError
from reflection_lab.finetune import FinetuneConfig
from reflection_lab.finetune.config import FinetuneError
from reflection_lab.profiles import get_profile


def test_logs_go_only_to_the_run_folder_by_default(tmp_path):
    from reflection_lab.core.devices import pick_device
    from reflection_lab.finetune.trainer import training_args

    config = FinetuneConfig()
    assert config.report_to == "none" and config.reporters() == []
    assert training_args(config, tmp_path, pick_device(), False).report_to in ([], ["none"], "none")


def test_a_logger_that_is_installed_is_passed_to_the_trainer(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "trackio" else real(name, *a))
    assert FinetuneConfig(report_to="trackio").reporters() == ["trackio"]


def test_a_missing_logger_package_is_named_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(FinetuneError, match=r"pip install wandb.*report_to=none"):
        FinetuneConfig(report_to="wandb").reporters()


def test_an_unknown_logger_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="report_to must be one of"):
        FinetuneConfig(report_to="mlflowx")


def test_report_to_and_merge_come_from_the_profile_and_only_merge_is_fingerprinted():
    config = FinetuneConfig.from_profile(get_profile("offline", report_to="tensorboard", merge=True))
    assert config.report_to == "tensorboard" and config.merge is True
    assert "report_to" not in config.as_dict() and config.as_dict()["merge"] is True


def test_the_cli_reaches_report_to_and_fails_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from reflection_lab.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = main(["finetune", "--run", str(tmp_path / "r"), "--set", "report_to=wandb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith("error: report_to='wandb' needs the package 'wandb'")
