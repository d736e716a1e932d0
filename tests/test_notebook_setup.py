import json
import sys
import types

from reflection_lab import notebook as nb


def test_setup_reports_versions_device_and_profile(capsys):
    rep = nb.setup("offline")
    out = capsys.readouterr().out
    assert "torch" in out and "device: cpu" in out and "offline" in out
    assert rep["colab"] is False and rep["warnings"] == []


def test_gpu_profile_on_cpu_warns():
    rep = nb.setup("gpu", quiet=True)
    assert any("meant for a GPU" in w for w in rep["warnings"])


def test_restart_detection(monkeypatch):
    fake = types.ModuleType("transformers")
    fake.__version__ = "0.0.1"
    monkeypatch.setitem(sys.modules, "transformers", fake)
    assert any(s.startswith("transformers (imported 0.0.1") for s in nb.restart_needed())
    assert any("RESTART THE RUNTIME" in w for w in nb.setup("offline", quiet=True)["warnings"])


def test_colab_detection_and_install_is_a_no_op_elsewhere(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert not nb.on_colab()
    assert "nothing installed" in nb.colab_install()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-x")
    assert nb.on_colab()


def test_params_from_environment(monkeypatch):
    monkeypatch.setenv("REFLECTION_LAB_PROFILE", "ci")
    monkeypatch.setenv("REFLECTION_LAB_OVERRIDES", json.dumps({"n_samples": 3}))
    p = nb.notebook_params()
    assert p["profile"] == "ci" and p["overrides"] == {"n_samples": 3}
