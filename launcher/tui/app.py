"""The Textual app: screens for models, quants and the plan, over the same core calls as the CLI.

Textual is imported only here, when the TUI runs. Heavy work (planning every quant, reading headers,
downloading, building) runs in worker threads so the screens never freeze.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding

from launcher.machine import Machine


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

    def on_mount(self) -> None:
        from launcher.tui.models_screen import ModelsScreen

        self.push_screen(ModelsScreen(self.machine))

    def action_help(self) -> None:
        from launcher.tui.dialogs import HelpScreen

        self.push_screen(HelpScreen())


def run_tui(machine: Machine) -> list[str] | None:
    return RunqApp(machine).run()
