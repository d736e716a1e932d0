"""Peak memory in bytes on every platform: ru_maxrss is KiB on Linux but bytes on macOS."""

import resource
import sys
import types

from reflection_lab.core import devices


def _usage(value: int):
    return lambda who: types.SimpleNamespace(ru_maxrss=value)


def test_linux_kib_and_macos_bytes_both_become_bytes(monkeypatch):
    monkeypatch.setattr(resource, "getrusage", _usage(2048))
    monkeypatch.setattr(sys, "platform", "linux")
    assert devices.peak_rss_bytes() == 2048 * 1024
    monkeypatch.setattr(sys, "platform", "darwin")
    assert devices.peak_rss_bytes() == 2048


def test_the_real_peak_is_at_least_the_current_resident_size():
    import psutil

    assert devices.peak_rss_bytes() >= psutil.Process().memory_info().rss * 0.9
    rep = devices.memory_report("cpu")
    assert 0 < rep["rss_gib"] <= rep["peak_rss_gib"] + 0.01
