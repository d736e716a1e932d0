"""Live viewers for Reflection-format generation: one model, or two side by side on the same prompt.

The thinking, each reflection (its own box), the output, any text outside the tags and the
parser's diagnostics fill separate panes while tokens arrive. The widgets are ipywidgets 8 core
widgets only (HTML, Textarea, Dropdown, BoundedIntText, Button in boxes): no custom JavaScript or
extension, so JupyterLab, the classic notebook and Colab all show them. All logic lives in
viewer_state (`StreamView`, `Throttle`, `drive_all`); the classes here only lay out widgets and
copy a view into them. Generation runs in a background thread, so the Stop button stays clickable
and the panes update while the model writes.

A backend is anything with `stream(prompt, preset=..., max_new_tokens=...)` (LocalModel,
OpenAIModel, ScriptedModel) or a callable `fn(prompt, preset, max_new_tokens)` returning chunks.

    from reflection_lab.finetune import finetuned_model
    from reflection_lab.inference.viewer import ReflectionViewer, CompareViewer
    ReflectionViewer(finetuned_model(run)).ui
    CompareViewer(LocalModel.from_spec("smollm2-135m"), finetuned_model(run), labels=["base", "tuned"]).ui
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from ..llm.sampling import PRESETS
from ..llm.streams import Generation, backend_name, open_stream
from .viewer_state import StreamView, Throttle, compare_summary_html, drive, drive_all

# --- widgets ----------------------------------------------------------------------------------------


class _Panes:
    """The widgets showing one StreamView; `refresh()` copies the view into them."""

    def __init__(self, view: StreamView):
        import ipywidgets as W

        self.W, self.view = W, view
        self.status, self.thinking, self.output = W.HTML(), W.HTML(), W.HTML()
        self.outside, self.diagnostics = W.HTML(), W.HTML()
        self.reflections = W.VBox([])
        self.box = W.VBox([self.status, self.thinking, self.reflections, self.output, self.outside, self.diagnostics],
                          layout=W.Layout(flex="1 1 0", min_width="0"))
        # stable CSS classes for browser tests (no behaviour)
        for widget, name in ((self.box, "rl-panes"), (self.status, "rl-pane-status"),
                             (self.thinking, "rl-pane-thinking"), (self.reflections, "rl-pane-reflections"),
                             (self.output, "rl-pane-output"), (self.outside, "rl-pane-outside"),
                             (self.diagnostics, "rl-pane-diagnostics")):
            widget.add_class(name)
        self._seen = -1
        self.refresh()

    def refresh(self) -> None:
        v = self.view
        if v.version == self._seen:
            return
        self._seen = v.version
        self.status.value, self.thinking.value = v.status_html(), v.thinking_html()
        boxes = list(self.reflections.children)
        keys = sorted(v.reflections)
        if len(boxes) != len(keys):  # one box per reflection, created as they appear
            boxes = boxes[:len(keys)] + [self.W.HTML() for _ in range(len(keys) - len(boxes))]
            self.reflections.children = tuple(boxes)
        for box, i in zip(boxes, keys):
            box.value = v.reflection_html(i)
        self.output.value, self.outside.value = v.output_html(), v.outside_html()
        self.diagnostics.value = v.diagnostics_html()


class _Controls:
    def __init__(self, prompt: str, preset: str, max_new_tokens: int, presets: Sequence[str]):
        import ipywidgets as W

        self.prompt = W.Textarea(value=prompt, placeholder="Ask something",
                                 layout=W.Layout(width="100%", height="70px"))
        self.preset = W.Dropdown(options=list(presets), value=preset, description="preset",
                                 style={"description_width": "50px"}, layout=W.Layout(width="200px"))
        self.max_new_tokens = W.BoundedIntText(value=max_new_tokens, min=1, max=32768, description="max tokens",
                                               style={"description_width": "75px"}, layout=W.Layout(width="170px"))
        self.generate = W.Button(description="Generate", button_style="primary", icon="play")
        self.stop = W.Button(description="Stop", icon="stop", disabled=True)
        self.box = W.VBox([self.prompt, W.HBox([self.preset, self.max_new_tokens, self.generate, self.stop])])
        for widget, name in ((self.prompt, "rl-viewer-prompt"), (self.preset, "rl-viewer-preset"),
                             (self.max_new_tokens, "rl-viewer-max-tokens"), (self.generate, "rl-viewer-generate"),
                             (self.stop, "rl-viewer-stop")):
            widget.add_class(name)

    def busy(self, running: bool) -> None:
        self.generate.disabled, self.stop.disabled = running, not running


class _Base:
    """Shared run logic: a worker thread, a stop event, throttled refreshes."""

    def __init__(self, interval_s: float, threaded: bool):
        self.throttle = Throttle(interval_s)
        self.threaded = threaded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a threaded generation finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _launch(self, target: Callable[[], Any]) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # a double click while the first generation runs
        if self.threaded:
            self._thread = threading.Thread(target=target, name="reflection-lab-viewer", daemon=True)
            self._thread.start()
        else:
            target()

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.ui._repr_mimebundle_(**kw)


class ReflectionViewer(_Base):
    """Prompt box, preset, Generate/Stop, and live panes for one backend. `.ui` is the widget, `.state` the logic."""

    def __init__(self, backend: Any, *, prompt: str = "", preset: str = "greedy", max_new_tokens: int = 256,
                 title: str | None = None, interval_s: float = 0.05, threaded: bool = True,
                 presets: Sequence[str] = tuple(PRESETS)):
        import ipywidgets as W

        super().__init__(interval_s, threaded)
        self.backend = backend
        self.state = StreamView(title or backend_name(backend))
        self.controls = _Controls(prompt, preset, max_new_tokens, presets)
        self.panes = _Panes(self.state)
        self.panes.box.layout.flex = "0 1 auto"  # in a VBox, the HBox-friendly "1 1 0" collapses to zero height
        self.controls.generate.on_click(lambda _: self._launch(self.generate))
        self.controls.stop.on_click(lambda _: self.stop())
        self.ui = W.VBox([self.controls.box, self.panes.box])
        self.ui.add_class("rl-reflection-viewer")

    def generate(self, prompt: str | None = None) -> Generation:
        """Generate for the prompt box (or `prompt`) now, in this thread; the panes follow along."""
        c = self.controls
        text = c.prompt.value if prompt is None else prompt
        self._stop.clear()
        c.busy(True)
        self.state.start(text)
        self.panes.refresh()
        try:
            try:
                stream = open_stream(self.backend, text, c.preset.value, int(c.max_new_tokens.value))
            except Exception as exc:
                self.state.finish("error", error=f"{type(exc).__name__}: {exc}")
                return self.state.generation()
            return drive(self.state, stream, on_update=self.panes.refresh, throttle=self.throttle, stop=self._stop)
        finally:
            c.busy(False)
            self.panes.refresh()



class CompareViewer(_Base):
    """Two backends (e.g. base vs fine-tuned) answer the same prompt side by side, streaming together."""

    def __init__(self, left: Any, right: Any, *, labels: Sequence[str] | None = None, prompt: str = "",
                 preset: str = "greedy", max_new_tokens: int = 256, interval_s: float = 0.05,
                 threaded: bool = True, presets: Sequence[str] = tuple(PRESETS)):
        import ipywidgets as W

        super().__init__(interval_s, threaded)
        self.backends = (left, right)
        names = list(labels) if labels else [backend_name(left), backend_name(right)]
        self.states = (StreamView(names[0]), StreamView(names[1]))
        self.controls = _Controls(prompt, preset, max_new_tokens, presets)
        self.panes = (_Panes(self.states[0]), _Panes(self.states[1]))
        self.summary = W.HTML()
        self.controls.generate.on_click(lambda _: self._launch(self.generate))
        self.controls.stop.on_click(lambda _: self.stop())
        self.ui = W.VBox([self.controls.box, W.HBox([p.box for p in self.panes], layout=W.Layout(width="100%")),
                          self.summary])
        self.ui.add_class("rl-compare-viewer")

    def _refresh(self) -> None:
        for p in self.panes:
            p.refresh()

    def generate(self, prompt: str | None = None) -> list[Generation]:
        """Both backends answer the prompt; chunks are read from each in turn."""
        c = self.controls
        text = c.prompt.value if prompt is None else prompt
        self._stop.clear()
        c.busy(True)
        self.summary.value = ""
        pairs = []
        try:
            for view, backend in zip(self.states, self.backends):
                view.start(text)
                try:
                    pairs.append((view, open_stream(backend, text, c.preset.value, int(c.max_new_tokens.value))))
                except Exception as exc:
                    view.finish("error", error=f"{type(exc).__name__}: {exc}")
            self._refresh()
            drive_all(pairs, on_update=self._refresh, throttle=self.throttle, stop=self._stop)
            return [v.generation() for v in self.states]
        finally:
            c.busy(False)
            self._refresh()
            self.summary.value = compare_summary_html(self.states)


def viewer(backend: Any, **kw: Any) -> ReflectionViewer:
    return ReflectionViewer(backend, **kw)


def compare(left: Any, right: Any, **kw: Any) -> CompareViewer:
    return CompareViewer(left, right, **kw)


__all__ = ["CompareViewer", "ReflectionViewer", "StreamView", "Throttle", "compare", "compare_summary_html", "drive",
           "drive_all", "viewer"]
