import pytest

from reflection_lab.core.devices import environment_report, pick_device
from reflection_lab.profiles import PROFILES, get_profile


def test_cpu_gets_float32_and_reports_it():
    info = pick_device()
    assert info.device == "cpu"
    assert info.dtype == "float32"
    assert "float32" in info.summary() and "bitsandbytes" in info.summary()
    assert info.bnb_4bit_ok


def test_dtype_override_and_cuda_fallback_note():
    assert pick_device(dtype="bfloat16").dtype == "bfloat16"
    info = pick_device(prefer="cuda")
    assert info.device == "cpu" and any("no GPU" in n for n in info.notes)


def test_environment_report_lists_versions():
    rep = environment_report()
    assert "torch" in rep and "transformers" in rep and "python" in rep


def test_profiles_cover_cpu_t4_and_big_gpu():
    assert {"ci", "offline", "colab-t4", "gpu"} <= set(PROFILES)
    assert PROFILES["colab-t4"].dtype == "float16"
    assert PROFILES["gpu"].dtype == "bfloat16"
    assert PROFILES["offline"].student == "smollm2-135m"


def test_profile_overrides_and_errors():
    p = get_profile("ci", n_samples=3)
    assert p.n_samples == 3 and p.student == "tiny-llama"
    with pytest.raises(TypeError, match="unknown profile field"):
        get_profile("ci", n_sampels=3)
    with pytest.raises(KeyError, match="unknown profile"):
        get_profile("nope")
