"""The TUI's row tables: Textual's DataTable, with Home and End moving the row cursor to the first and last row
(DataTable's own Home/End scroll sideways, which a table of rows never needs)."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable


class RowTable(DataTable[object]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]
