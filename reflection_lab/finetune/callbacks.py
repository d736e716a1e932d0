"""Trainer callbacks for stage 05: the journalled loss log, checkpoint markers, progress and a live loss curve.

Why callbacks and not a custom loop: the transformers Trainer already does checkpoints, resume,
gradient accumulation and DDP correctly; the lab only adds what a learner needs to see and what a
killed run needs to continue (a log that survives `kill -9`, and a marker that says a checkpoint
was written completely).

The live curve is a plain `go.Figure` shown inside an ipywidgets `Output` and re-rendered every
few steps: it serialises to a few KB in a saved notebook, where a FigureWidget embeds 5 MB of
plotly.js into the widget state.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from ..core.runs import Journal, read_jsonl, write_jsonl_atomic

COMPLETE_MARKER = "reflection_lab_complete.json"


class JournalLogCallback(TrainerCallback):
    """Append every logged step (train loss, learning rate, real tokens seen; eval loss) to a JSONL journal.

    `seconds` counts training time over the whole run: a resumed process starts from the time the kept
    part of the log had taken (`start_seconds`), so the last row says how long every kept step took.
    """

    def __init__(self, path: Path, listeners: list[Callable[[dict], None]] | None = None, start_seconds: float = 0.0):
        self.journal = Journal(path, key="key")
        self.listeners = listeners or []
        self.t0 = time.perf_counter() - start_seconds

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        rec: dict[str, Any] = {"step": state.global_step, "epoch": round(float(state.epoch or 0), 4)}
        if "loss" in logs:
            rec.update(kind="train", loss=float(logs["loss"]), learning_rate=logs.get("learning_rate"),
                       grad_norm=logs.get("grad_norm"), tokens=int(state.num_input_tokens_seen or 0))
        elif "eval_loss" in logs:
            rec.update(kind="eval", eval_loss=float(logs["eval_loss"]))
        else:
            return  # the end-of-training summary (train_runtime, ...) goes into the manifest instead
        rec["seconds"] = round(time.perf_counter() - self.t0, 3)
        rec["key"] = f"{rec['kind']}:{rec['step']}"
        self.journal.append(rec)
        for fn in self.listeners:
            fn(rec)


class CheckpointMarkerCallback(TrainerCallback):
    """Write a marker into a checkpoint folder once the Trainer has finished writing it.

    A `kill -9` during a save leaves a half-written folder; resuming from it would fail or, worse,
    load a mismatched optimizer state. Only folders with the marker are resumed from.
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step, "time": time.time()}))


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` folder that carries the completion marker."""
    found = []
    for p in folder.glob("checkpoint-*"):
        if p.is_dir() and (p / COMPLETE_MARKER).exists() and p.name.split("-")[-1].isdigit():
            found.append((int(p.name.split("-")[-1]), p))
    return max(found)[1] if found else None


def trim_log(path: Path, step: int) -> list[dict]:
    """Keep log records up to `step` (what the checkpoint we resume from has seen) and return them.

    The killed run may have logged steps after its last checkpoint; they are recomputed on resume
    and must not appear twice.
    """
    if not path.exists():
        return []
    Journal(path).load()  # cuts a torn last line
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    write_jsonl_atomic(path, rows)
    return rows


def loss_figure(rows: list[dict], title: str = "Training loss") -> Any:
    """Train loss per step (line) and eval loss (markers) from train_log rows, as a plain plotly Figure."""
    import plotly.graph_objects as go

    train = [r for r in rows if r.get("kind") == "train"]
    ev = [r for r in rows if r.get("kind") == "eval"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r["step"] for r in train], y=[r["loss"] for r in train], mode="lines+markers",
                             name="train loss", marker={"size": 4}))
    if ev:
        fig.add_trace(go.Scatter(x=[r["step"] for r in ev], y=[r["eval_loss"] for r in ev], mode="markers+lines",
                                 name="eval loss", marker={"size": 9, "symbol": "diamond"}))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title="cross-entropy (answer tokens)",
                      height=320, margin={"l": 50, "r": 20, "t": 40, "b": 40}, template="plotly_white")
    return fig


class ProgressCallback(TrainerCallback):
    """Progress for people: a widget bar + live loss curve in a notebook, short text lines elsewhere.

    `display` and `widgets` are injectable so the notebook path can be tested without a kernel.
    """

    def __init__(self, *, live_plot: bool, notebook: bool, every: int = 5, text_every: int | None = None,
                 display: Callable[[Any], None] | None = None, print_fn: Callable[[str], None] = print):
        self.live_plot = live_plot
        self.notebook = notebook
        self.every = max(1, every)
        self.text_every = text_every
        self.display = display
        self.print = print_fn
        self.rows: list[dict] = []
        self.bar: Any = None
        self.label: Any = None
        self.out: Any = None
        self.t0 = 0.0
        self.start_step = 0
        self.renders = 0
        self.state: Any = None

    def seed_rows(self, rows: list[dict]) -> None:
        """Show what a resumed run already did (the log up to its checkpoint)."""
        self.rows = list(rows)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.state = state
        self.t0 = time.perf_counter()
        self.start_step = state.global_step
        if self.text_every is None:
            self.text_every = max(1, state.max_steps // 10)
        if self.notebook:
            try:
                import ipywidgets as w
            except ImportError:  # a kernel without the notebook extra: fall back to text lines
                self.notebook = False
                return
            show = self.display
            if show is None:
                from IPython.display import display as show
            self.bar = w.IntProgress(value=state.global_step, min=0, max=state.max_steps, description="training")
            self.label = w.HTML(value="starting...")
            children = [w.HBox([self.bar, self.label])]
            if self.live_plot:
                self.out = w.Output()
                children.append(self.out)
            show(w.VBox(children))
            self._render()

    def add_row(self, rec: dict) -> None:
        """Called by the journal callback for every logged record (after the step it belongs to)."""
        self.rows.append(rec)
        if rec.get("kind") == "eval":
            self._render()
        state = self.state
        if self.notebook and self.label is not None and state is not None:
            self.label.value = self._status(state)
        if (not self.notebook and state is not None and rec.get("kind") == "train" and self.text_every
                and (rec["step"] % self.text_every == 0 or rec["step"] == state.max_steps)):
            self.print(self._status(state))  # one line per tenth of the run

    def _status(self, state: Any) -> str:
        done = state.global_step - self.start_step
        dt = time.perf_counter() - self.t0
        per = dt / done if done else 0.0
        eta = per * (state.max_steps - state.global_step)
        last = next((r for r in reversed(self.rows) if r.get("kind") == "train"), None)
        loss = f"loss {last['loss']:.4f}" if last else "loss -"
        return f"step {state.global_step}/{state.max_steps} | {loss} | {per:.2f} s/step | ETA {eta:.0f} s"

    def _render(self) -> None:
        if self.out is None:
            return
        self.out.clear_output(wait=True)
        with self.out:
            from IPython.display import display as show

            (self.display or show)(loss_figure(self.rows))
        self.renders += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.state = state
        if self.notebook:
            self.bar.value = state.global_step
            self.label.value = self._status(state)
            if state.global_step % self.every == 0:
                self._render()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self.notebook:
            self.bar.value = state.global_step
            self.bar.bar_style = "success"
            self.label.value = self._status(state) + " | done"
            self._render()


class SleepCallback(TrainerCallback):
    """Slow every step down (tests use it to kill a run between two checkpoints reliably)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)
