"""The Textual app: screens for models, quants and the plan, over the same core calls as the CLI.

Textual is imported only here, when the TUI runs. Heavy work (planning every quant, reading headers,
downloading, building) runs in worker threads so the screens never freeze.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding

from launcher.machine.spec import Machine


class RunqApp(App[list[str]]):
    CSS_PATH = "runq.tcss"
    TITLE = "runq"
    ENABLE_COMMAND_PALETTE = False  # every action has a key in the footer
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(self, machine: Machine, machine_flags: tuple[str, ...] = (), port: int | None = None) -> None:
        super().__init__()
        self.machine = machine
        # The flags that described the machine (--gpu/--ram/--cores/--machine): the commands the TUI hands over
        # to (run, service install) must plan for the same machine, or they would contradict what it showed.
        self.machine_flags = machine_flags
        self.port = port  # `runq tui --port`: where the server (`s`) and the service (`i`) listen

    def on_mount(self) -> None:
        from launcher.tui.models_screen import ModelsScreen

        self.push_screen(ModelsScreen(self.machine))

    def action_help(self) -> None:
        from launcher.tui.dialogs import HelpScreen

        self.push_screen(HelpScreen())


def machine_flags(args: object) -> tuple[str, ...]:
    """The machine flags of a parsed command line, to pass on as they were given (a file by its full path)."""
    from pathlib import Path

    out: list[str] = []
    for gpu in getattr(args, "gpu", None) or []:
        out += ["--gpu", gpu]
    if ram := getattr(args, "ram", None):
        out += ["--ram", ram]
    if (cores := getattr(args, "cores", None)) is not None:
        out += ["--cores", str(cores)]
    if file := getattr(args, "machine", None):
        out += ["--machine", str(Path(file).resolve())]
    return tuple(out)


def run_tui(machine: Machine, flags: tuple[str, ...] = (), *, port: int | None = None) -> list[str] | None:
    return RunqApp(machine, flags, port).run()
