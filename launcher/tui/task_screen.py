"""Long steps in a worker with progress, speed, ETA and cancel: downloading a quant, building llama.cpp."""

from __future__ import annotations

import time
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, ProgressBar, Static

from launcher.errors import RunqError


class Cancelled(Exception):
    pass


class TaskScreen(ModalScreen[bool]):
    """A modal step; subclasses implement run() and call self.progress()."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    title_text = ""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False
        self.t0 = time.monotonic()

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="title")
            yield ProgressBar(total=100, id="bar", show_eta=False)
            yield Static("Starting…", id="detail", markup=False)
            yield Button("Cancel", variant="error", id="cancel")

    def on_mount(self) -> None:
        self.work()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled

    def progress(self, done: float, total: float, detail: str) -> None:
        """From the worker thread: move the bar, say what is happening."""
        self.app.call_from_thread(self._show, done, total, detail)
        self.check()

    def _show(self, done: float, total: float, detail: str) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=total or 100, progress=done)
        self.query_one("#detail", Static).update(detail)

    @work(thread=True, exclusive=True, group="task")
    def work(self) -> None:
        try:
            message = self.run()
        except Cancelled:
            self.app.call_from_thread(self.finish, False, "Cancelled: what was done so far is kept for next time.")
        except RunqError as e:
            self.app.call_from_thread(self.fail, e.message, e.hint)
        else:
            self.app.call_from_thread(self.finish, True, message)

    def run(self) -> str:
        raise NotImplementedError

    def finish(self, ok: bool, message: str) -> None:
        self.dismiss(ok)
        self.app.notify(message, severity="information" if ok else "warning", timeout=8)

    def fail(self, message: str, hint: str | None) -> None:
        from launcher.tui.dialogs import ErrorDialog

        self.dismiss(False)
        self.app.push_screen(ErrorDialog(message, hint))

    def action_cancel(self) -> None:
        self.cancelled = True
        self.query_one("#detail", Static).update("Cancelling…")

    def on_button_pressed(self) -> None:
        self.action_cancel()


class DownloadTask(TaskScreen):
    """The same pull as `runq pull`: free-disk check, resume, and the finished set verified against its headers."""

    def __init__(self, model: str, quant: str) -> None:
        super().__init__()
        self.model, self.quant = model, quant
        self.title_text = f"Downloading {model} {quant}"

    def run(self) -> str:
        from launcher.catalog import profiles as catalog
        from launcher.hub import pull
        from launcher.progress import Meter

        st = pull.state(catalog.require_profile(self.model), self.quant)
        meter = Meter()
        current = {"file": ""}

        def on_file(i: int, n: int, f: Any) -> None:
            current["file"] = f"[{i}/{n}] {f.path}"
            meter.restart()

        def on_bytes(done: int, total: int) -> None:
            self.progress(done, total, f"{current['file']}\n{meter.update(done, total).text()}")

        done = pull.pull(st, on_file=on_file, on_bytes=on_bytes)
        return f"Downloaded {self.quant} and verified {done.files} file(s), {done.tensors} tensors: {done.first}"


class BuildTask(TaskScreen):
    title_text = "Building llama.cpp for this machine"

    def run(self) -> str:
        from launcher.llama.build import BuildRequest, ensure_build

        notes: list[str] = []

        def on_progress(pct: int, step: str) -> None:
            self.progress(pct, 100, f"{step}: {pct}%" + (f"\n{notes[-1]}" if notes else ""))

        built, cached = ensure_build(BuildRequest(), on_progress, notes.append, should_stop=lambda: self.cancelled)
        return f"llama.cpp is {'already ' if cached else ''}built: {built.bin_dir}"
