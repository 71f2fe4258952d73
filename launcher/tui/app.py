"""The Textual app: screens for models, quants and the plan, over the same core calls as the CLI.

Textual is imported only here, when the TUI runs. Heavy work (planning every quant, reading headers,
downloading, building) runs in worker threads so the screens never freeze.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding

from launcher.machine import Machine
from launcher.units import fmt_bytes


class RunqApp(App[list[str]]):
    CSS_PATH = "runq.tcss"
    TITLE = "runq"
    ENABLE_COMMAND_PALETTE = False  # every action has a key in the footer
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(self, machine: Machine) -> None:
        super().__init__()
        self.machine = machine

    @property
    def machine_text(self) -> str:
        m = self.machine
        gpus = ", ".join(f"{g.name} {fmt_bytes(g.free_bytes)}" for g in m.gpus) or f"no GPU ({m.gpu_note or 'none'})"
        kind = "described" if m.source != "probed" else "this machine"
        return f"{kind}: {gpus}; {fmt_bytes(m.ram_available_bytes)} RAM available; {m.cores} cores"

    def on_mount(self) -> None:
        from launcher.tui.models_screen import ModelsScreen

        self.push_screen(ModelsScreen())

    def open_model(self, key: str) -> None:
        """Load a model (reading a local file's header may fail: that is a dialog, not a crash)."""
        from launcher.errors import RunqError
        from launcher.tui.data import load_target
        from launcher.tui.quants_screen import QuantsScreen

        try:
            target = load_target(key)
        except RunqError as e:
            self.error(e.message, e.hint)
            return
        self.push_screen(QuantsScreen(target))

    def error(self, message: str, hint: str | None = None) -> None:
        from launcher.tui.dialogs import ErrorDialog

        self.push_screen(ErrorDialog(message, hint))

    def action_help(self) -> None:
        from launcher.tui.dialogs import HelpScreen

        self.push_screen(HelpScreen())

    def exit_to(self, argv: list[str]) -> None:
        """Leave the TUI and run a runq command in the terminal (a chat needs the terminal to itself)."""
        self.exit(argv)


def run_tui(machine: Machine) -> list[str] | None:
    return RunqApp(machine).run()
