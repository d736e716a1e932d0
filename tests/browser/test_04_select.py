"""Notebook 04 in JupyterLab: figures render, the threshold sliders re-decide, the inspector browses.

Why in a browser: the widget tests drive the Python state objects; only a real front end shows whether
the plotly figures draw, whether a slider moved by a person reaches its Python observer, and whether the
inspector's HTML (word diff, token heatmap) appears. Tests in this module share one executed notebook and
run in file order; each leaves the widgets as it found them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .browser_lab import figure_signature, screenshot, svg_texts, wait_until

pytestmark = pytest.mark.browser
TIMEOUT_S = 60  # one re-decision and redraw of 8 samples; generous for a loaded 2-core machine


def _kept(explorer: Any) -> int | None:
    """The bold number in "<b>N</b> of M samples kept": what a person reads after moving a slider."""
    text = explorer.locator(".rl-explorer-count b").first.inner_text().replace(",", "").strip()
    return int(text) if text.isdigit() else None


def _annotations(plot: Any) -> str:
    return svg_texts(plot)


def test_plotly_figures_render(select_page: Any) -> None:
    """The explorer's two histograms and the sankey and scatter cells all draw an SVG figure."""
    plots = select_page.locator(".jp-OutputArea .js-plotly-plot")
    wait_until(lambda: plots.count() >= 4, TIMEOUT_S, "four plotly figures are in the outputs")
    for i in range(plots.count()):
        assert plots.nth(i).locator("svg.main-svg").first.is_visible(), f"figure {i} has no visible svg.main-svg"
        assert plots.nth(i).locator("svg.main-svg path").count() > 0, f"figure {i} drew no paths"
    explorer = select_page.locator(".rl-threshold-explorer")
    assert explorer.locator(".rl-explorer-plot svg.main-svg").count() >= 2, "the explorer shows no histogram"
    screenshot(explorer.locator(".rl-explorer-plot"), "04_explorer_histograms")
    screenshot(plots.nth(plots.count() - 1), "04_scatter_figure")


def test_ifd_slider_readout_changes_kept_count_and_histogram(select_page: Any) -> None:
    """Type a value into the IFD max slider's box (Enter), as a person would: count and histogram follow."""
    explorer = select_page.locator(".rl-threshold-explorer")
    plot = explorer.locator(".rl-explorer-plot")
    readout = explorer.locator(".rl-ifd-max .widget-readout")
    original = readout.inner_text().strip()
    kept0, sig0 = _kept(explorer), figure_signature(plot)
    assert kept0 and kept0 > 0, f"the profile's thresholds should keep some samples, the page shows {kept0}"
    assert "IFD max = 0" not in _annotations(plot)
    screenshot(explorer, "04_explorer_before")

    readout.fill("0")
    readout.press("Enter")
    wait_until(lambda: _kept(explorer) == 0, TIMEOUT_S,
               f"the kept count drops from {kept0} to 0 after IFD max = 0 (nothing has IFD < 0)")
    wait_until(lambda: figure_signature(plot) not in ("", sig0) and re.search(r"(?<!r-)IFD max = 0\b",
                                                                                _annotations(plot)),
               TIMEOUT_S, "the IFD histogram is redrawn with its threshold line at 0")
    assert "0 of" in explorer.locator(".rl-explorer-count").inner_text()
    screenshot(explorer, "04_explorer_ifd_max_0")

    readout.fill(original)  # back to the profile's value: the count comes back too
    readout.press("Enter")
    wait_until(lambda: _kept(explorer) == kept0, TIMEOUT_S, f"the kept count returns to {kept0}")
    wait_until(lambda: figure_signature(plot) == sig0, TIMEOUT_S, "the histogram returns to its first drawing")


def test_rifd_slider_keyboard_changes_kept_count_and_histogram(select_page: Any) -> None:
    """Focus the r-IFD max handle and press Home, then End (keyboard on the slider itself)."""
    explorer = select_page.locator(".rl-threshold-explorer")
    plot = explorer.locator(".rl-explorer-plot")
    handle = explorer.locator(".rl-rifd-max .noUi-handle").first
    readout = explorer.locator(".rl-rifd-max .widget-readout")
    original = readout.inner_text().strip()
    kept0, sig0 = _kept(explorer), figure_signature(plot)
    assert kept0 and kept0 > 0

    handle.focus()
    handle.press("Home")  # the slider's minimum, 0: no r-IFD is below it
    wait_until(lambda: readout.inner_text().strip() in ("0.00", "0"), TIMEOUT_S, "the r-IFD readout shows 0")
    wait_until(lambda: _kept(explorer) == 0, TIMEOUT_S, f"the kept count drops from {kept0} to 0 (r-IFD max = 0)")
    wait_until(lambda: figure_signature(plot) not in ("", sig0) and "r-IFD max = 0" in _annotations(plot),
               TIMEOUT_S, "the r-IFD histogram is redrawn with its threshold line at 0")
    screenshot(explorer, "04_explorer_rifd_max_home")

    handle.press("End")  # the maximum (2): looser than the profile's limit, so at least as many kept
    wait_until(lambda: (_kept(explorer) or 0) >= kept0, TIMEOUT_S, f"the kept count is back to >= {kept0}")
    wait_until(lambda: "r-IFD max = 2" in _annotations(plot), TIMEOUT_S, "the threshold line moves to 2")

    readout.fill(original)
    readout.press("Enter")
    wait_until(lambda: _kept(explorer) == kept0, TIMEOUT_S, f"the kept count returns to {kept0}")


def test_sample_inspector_next_shows_diff_and_heatmap(select_page: Any) -> None:
    """The samples tab: "next ▶" moves to the next id; the word diff and the token heatmap are drawn."""
    lab = select_page.locator(".rl-selection-lab")
    lab.locator(".lm-TabBar-tab", has_text="samples").click()
    inspector = lab.locator(".rl-sample-inspector")
    inspector.wait_for(state="visible")
    body = inspector.locator(".rl-inspector-body")
    position = inspector.locator(".rl-inspector-position")

    def current_id() -> str:
        return body.locator(".widget-html-content > div b").first.inner_text().strip()

    def pos() -> tuple[int, int]:
        m = re.search(r"(\d+)\s*/\s*(\d+)", position.inner_text())
        assert m, f"no 'i / n' in the position text {position.inner_text()!r}"
        return int(m.group(1)), int(m.group(2))

    first, (i0, n) = current_id(), pos()
    assert n >= 2, f"the inspector needs two samples to move, it has {n}"
    screenshot(inspector, "04_inspector_first")
    seen = [first]
    found_diff = found_heat = False
    for step in range(1, n - i0 + 1):
        inspector.locator(".rl-inspector-next").click()
        wait_until(lambda: current_id() not in seen, TIMEOUT_S, f"'next' moves past {seen[-1]}")
        seen.append(current_id())
        assert pos()[0] == i0 + step, f"position shows {pos()}, expected {i0 + step} / {n}"
        if step == 1:
            screenshot(inspector, "04_inspector_next")
        found_diff = body.locator("td ins, td del").count() > 0  # th holds the legend's own <ins>/<del>
        found_heat = body.locator('span[title^="loss "][style*="rgba"]').count() > 0
        if found_diff and found_heat:
            break
    assert found_heat, f"no per-token heatmap spans on samples {seen}"
    assert found_diff, f"no word diff (<ins>/<del> in the diff cells) on samples {seen}"
    assert body.locator('span[title^="gain "]').count() > 0, "the 'how much the instruction helped' heatmap is missing"
    screenshot(inspector, "04_inspector_diff")
    screenshot(body.locator("div:has(> span[title^='loss '])").first, "04_inspector_heatmap")
    lab.locator(".lm-TabBar-tab", has_text="thresholds").click()
