"""Modal screens: an error with its hint, a command to copy, the help."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

HELP = """\
[b]runq[/b]: pick a model, see how it fits this machine, run it.

[b]Models[/b]  ↑/↓ Home/End choose · Enter open · r read the Hub's headers
         q quit
[b]Quants[/b]  ↑/↓ Home/End choose · Enter open the plan · Esc back
         c context (type it, Enter plans it and opens the plan)
         k KV cache type (Enter opens the list, ↑/↓, Enter picks)
[b]Plan[/b]    y copy the command · l dry-run launch · Esc back
         d download · b build llama.cpp · i install a service
         t chat (hands the terminal to llama-cli) · s server
Anywhere ? this help · ctrl+q quit

Sizes are [i]exact[/i] once GGUF headers were read (from files or
the Hub), [i]estimated[/i] before. Speeds are predictions from the
bytes each device reads per token.
"""


def show_error(app: App[object], message: str, hint: str | None = None) -> None:
    """An error in a dialog, as the CLI would say it (screens call this instead of reaching into the app)."""
    app.push_screen(ErrorDialog(message, hint))


class ErrorDialog(ModalScreen[None]):
    """An error as runq says it on the command line: what is wrong, and what to do."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.message, self.hint = message, hint

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Static("Error", classes="title")
            yield Static(self.message, id="error-message", markup=False)
            if self.hint:
                yield Static(f"Hint: {self.hint}", id="error-hint", markup=False)
            yield Button("Close", variant="primary", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss()


class TextDialog(ModalScreen[None]):
    """A text to read or copy (the dry-run command)."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close"), Binding("y", "copy", "Copy")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="title")
            yield Static(self.text, id="dialog-text", markup=False)
            yield Button("Close", variant="primary", id="close")

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.notify("Asked the terminal to copy it (OSC 52); if your terminal does not allow that, select the text")

    def on_button_pressed(self) -> None:
        self.dismiss()


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,enter", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP, id="help-text")
            yield Button("Close", variant="primary", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss()
