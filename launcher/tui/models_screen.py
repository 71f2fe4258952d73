"""Models: the catalog and the GGUF files on disk, each with its best quant here and how it fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from launcher.errors import RunqError
from launcher.tui.dialogs import show_error
from launcher.tui.table import RowTable
from launcher.units import fmt_bytes

if TYPE_CHECKING:
    from launcher.machine.spec import Machine
    from launcher.tui.data import ModelRow


class ModelsScreen(Screen[None]):
    BINDINGS = [
        Binding("enter", "open", "Open", priority=True),
        Binding("r", "refresh_hub", "Read Hub"),
        Binding("question_mark", "app.help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, machine: Machine) -> None:
        super().__init__()
        self.machine = machine
        self.rows: list[ModelRow] = []

    def compose(self) -> ComposeResult:
        yield Header()
        from launcher.tui.data import machine_text

        yield Static(machine_text(self.machine), id="machine")
        yield RowTable(id="models", cursor_type="row", zebra_stripes=True)
        # Planning every catalog model takes seconds: say so while the list is still blank.
        yield Static("Planning every model for this machine…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Model", "Best quant", "Fit", "Download", "On disk")
        self.load()

    def show(self, rows: list[ModelRow]) -> None:
        self.rows = rows
        table = self.query_one(DataTable)
        table.clear()
        for r in rows:
            size = fmt_bytes(r.download_bytes) if r.download_bytes else "-"
            table.add_row(r.title, r.best or "-", r.fit, size, r.on_disk, key=r.key)
        local = sum(1 for r in rows if r.kind == "local")
        n = len(rows) - local
        self.query_one("#status", Static).update(
            f"{n} model{'s' if n != 1 else ''} in the catalog, {local} quant{'s' if local != 1 else ''} on disk. "
            "Enter opens one."
        )

    @work(thread=True, exclusive=True, group="models")
    def load(self) -> None:
        from launcher.tui.data import model_rows

        try:
            rows = model_rows(self.machine)
        except RunqError as e:
            self.app.call_from_thread(show_error, self.app, e.message, e.hint)
            return
        self.app.call_from_thread(self.show, rows)

    @work(thread=True, exclusive=True, group="models")
    def action_refresh_hub(self) -> None:
        from launcher.catalog import profiles as catalog
        from launcher.pipeline.target import resolve

        self.app.call_from_thread(self.query_one("#status", Static).update, "Reading GGUF headers from the Hub…")
        exact, not_read = 0, []
        for p in catalog.load_profiles():
            try:
                sizes = resolve(p.name, network=True).sizes
            except RunqError as e:
                self.app.call_from_thread(show_error, self.app, e.message, e.hint)
                return
            if sizes.startswith("exact") and "cached headers" not in sizes and "estimated" not in sizes:
                exact += 1
            else:
                not_read.append((p.display_name, sizes))
        self.load()
        if not_read:  # no network, a failing Hub: say so, never return in silence
            name, why = not_read[0]
            more = f" and {len(not_read) - 1} more" if len(not_read) > 1 else ""
            self.app.call_from_thread(
                self.notify, f"The Hub's headers could not be read for {name}{more} ({why}); "
                f"{exact} model(s) read.", title="Read Hub", severity="warning", timeout=10,
            )  # fmt: skip
        else:
            self.app.call_from_thread(self.notify, f"Read the GGUF headers of {exact} model(s) from the Hub.")

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None:
            return
        row = self.rows[table.cursor_row]
        if row.fit == "damaged":
            show_error(self.app, f"{row.key}: {row.problem or 'the file cannot be read'}",
                       "download it again: `runq pull` continues a partial download")  # fmt: skip
            return
        self.open_model(row.key)

    def open_model(self, key: str) -> None:
        """Load a model (reading a local file's header may fail: that is a dialog, not a crash)."""
        from launcher.pipeline.target import resolve
        from launcher.tui.quants_screen import QuantsScreen

        try:
            target = resolve(key, network=False)
        except RunqError as e:
            show_error(self.app, e.message, e.hint)
            return
        self.app.push_screen(QuantsScreen(target, self.machine))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()
