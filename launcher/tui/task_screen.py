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
from launcher.units import fmt_bytes


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
        self.dismiss(False)
        self.app.error(message, hint)  # type: ignore[attr-defined]

    def action_cancel(self) -> None:
        self.cancelled = True
        self.query_one("#detail", Static).update("Cancelling…")

    def on_button_pressed(self) -> None:
        self.action_cancel()


class DownloadTask(TaskScreen):
    def __init__(self, model: str, quant: str) -> None:
        super().__init__()
        self.model, self.quant = model, quant
        self.title_text = f"Downloading {model} {quant}"

    def run(self) -> str:
        from launcher import catalog, hub
        from launcher.hub_layout import quants_by_name

        profile = catalog.require_profile(self.model)
        listing = hub.list_repo(profile.repo)
        rq = quants_by_name(profile, listing.files)[self.quant]
        hub.check_disk(hub.plan_pull(listing, rq, None), None)
        state: dict[str, Any] = {"file": "", "t0": time.monotonic(), "start": 0}

        def on_file(f: Any) -> None:
            state.update(file=f.path, t0=time.monotonic(), start=None)

        def on_bytes(done: int, total: int) -> None:
            if state["start"] is None:
                state["start"] = done
            rate = (done - state["start"]) / max(time.monotonic() - state["t0"], 1e-3)
            eta = (total - done) / rate if rate > 0 else 0
            self.progress(done, total, f"{state['file']}\n{fmt_bytes(done)} of {fmt_bytes(total)}, "
                                       f"{fmt_bytes(rate)}/s, ETA {int(eta // 60)}m{int(eta % 60):02d}s")  # fmt: skip

        paths = hub.download(listing, rq, None, on_file, on_bytes)
        return f"Downloaded {self.quant}: {paths[0]}"


class BuildTask(TaskScreen):
    title_text = "Building llama.cpp for this machine"

    def run(self) -> str:
        from launcher.build import build_for_this_machine

        notes: list[str] = []

        def on_progress(pct: int, step: str) -> None:
            self.progress(pct, 100, f"{step}: {pct}%" + (f"\n{notes[-1]}" if notes else ""))

        built = build_for_this_machine("auto", on_progress, should_stop=lambda: self.cancelled, say=notes.append)
        return f"llama.cpp is built: {built.bin_dir}"
