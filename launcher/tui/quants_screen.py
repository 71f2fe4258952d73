"""Quants: every quant of one model planned for this machine; context and KV cache type re-plan it live."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, Select, Static

from launcher.plan.kv_cache import KV_TYPE_BYTES
from launcher.tui.table import RowTable
from launcher.units import GiB, fmt_bytes

if TYPE_CHECKING:
    from launcher.machine.spec import Machine
    from launcher.pipeline.plan import Planned
    from launcher.pipeline.target import ModelTarget
    from launcher.plan.choose import Candidate


class QuantsScreen(Screen[None]):
    # Enter is not a priority binding: in the context box it confirms the typed value (plan, then open), in the
    # KV-cache list it picks an item, on the table it opens the row's plan.
    BINDINGS = [
        Binding("enter", "open_plan", "Plan"),
        Binding("c", "focus_ctx", "Context"),
        Binding("k", "focus_kv", "KV type"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, target: ModelTarget, machine: Machine) -> None:
        super().__init__()
        self.target, self.machine = target, machine
        self.choice: Planned | None = None  # the pipeline's plan at the values the table shows
        self.candidates: list[Candidate] = []
        self.planned: tuple[int, str] | None = None  # (context, KV type) the table shows
        self.open_when_planned = False  # Enter came before the plan for the typed values

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text.assemble((self.target.name, "bold"), f" — sizes: {self.target.sizes}"), id="title")
        with Horizontal(id="controls"):
            yield Label("Context")
            yield Input(str(self.target.default_ctx), id="ctx", type="integer", max_length=7)
            yield Label("KV cache")
            yield Select([(t, t) for t in KV_TYPE_BYTES], value="f16", id="kv", allow_blank=False)
        yield RowTable(id="quants", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("", "Quant", "Size", "GPU GiB", "CPU GiB", "tok/s", "Fits", "Sizes")
        self.replan()
        table.focus()

    def ctx(self) -> int | None:
        text = self.query_one("#ctx", Input).value.strip()
        return int(text) if text.isdigit() and 256 <= int(text) <= 10_000_000 else None

    def wanted(self) -> tuple[int, str] | None:
        ctx = self.ctx()
        return None if ctx is None else (ctx, str(self.query_one("#kv", Select).value))

    @on(Input.Changed, "#ctx")
    @on(Select.Changed, "#kv")
    def replan(self) -> None:
        ctx = self.ctx()
        if ctx is None:
            self.query_one("#status", Static).update("Context: a number of tokens, 256 or more.")
            return
        self.query_one("#status", Static).update(f"Planning at {ctx:,} tokens…")
        self.run_plan(ctx, str(self.query_one("#kv", Select).value))

    @work(thread=True, exclusive=True, group="plan")
    def run_plan(self, ctx: int, kv: str) -> None:
        from launcher.errors import RunqError
        from launcher.tui.data import plan_target

        try:
            result = plan_target(self.machine, self.target, ctx, kv, project=True)
        except RunqError as e:
            self.app.call_from_thread(self.query_one("#status", Static).update, f"[red]{e.message}[/red]")
            return
        self.app.call_from_thread(self.show, (ctx, kv), *result)

    def show(
        self, planned: tuple[int, str], choice: Planned | None, candidates: list[Candidate], problem: str | None
    ) -> None:
        if planned != self.wanted():
            return  # a plan for values typed over since: the plan for the current ones is on its way
        ctx = planned[0]
        self.planned, self.choice, self.candidates = planned, choice, candidates
        table = self.query_one(DataTable)
        table.clear()
        chosen = choice.quant if choice else None
        for c in candidates:
            p = c.plan
            mark = "★" if c.source.name == chosen else ""
            style = "bold" if mark else ""
            table.add_row(
                mark, f"[{style}]{c.source.name}[/]" if style else c.source.name, fmt_bytes(c.source.size_bytes),
                f"{p.gpu_bytes / GiB:.1f}", f"{p.cpu_bytes / GiB:.1f}", f"{p.predicted_tg_tps:.1f}",
                "[green]yes[/]" if p.fits else "[red]no[/]", "exact" if c.source.exact else "estimated",
                key=c.source.name,
            )  # fmt: skip
        if chosen:
            table.move_cursor(row=[c.source.name for c in candidates].index(chosen))
            status = f"★ {chosen}: the largest that fits at {ctx:,} tokens. Enter shows its plan."
        else:
            status = f"[red]{problem}[/red]"
        self.query_one("#status", Static).update(status)
        if self.open_when_planned:
            self.open_when_planned = False
            self.action_open_plan()

    @on(Input.Submitted, "#ctx")
    def ctx_entered(self) -> None:
        self.action_open_plan()

    def action_focus_ctx(self) -> None:
        self.query_one("#ctx", Input).focus()

    def action_focus_kv(self) -> None:
        self.query_one("#kv", Select).focus()

    def action_open_plan(self) -> None:
        """The plan of the row under the cursor, at the context and KV type typed now (planned first if need be)."""
        wanted = self.wanted()
        if wanted is None:
            self.query_one("#status", Static).update("Context: a number of tokens, 256 or more.")
            return
        if wanted != self.planned:
            self.open_when_planned = True
            self.query_one("#status", Static).update(f"Planning at {wanted[0]:,} tokens… (the plan opens next)")
            return
        table = self.query_one(DataTable)
        if not self.candidates or table.cursor_row is None:
            return
        cand = self.candidates[table.cursor_row]
        if not cand.plan.fits:
            from launcher.tui.dialogs import show_error

            show_error(self.app, f"{cand.source.name} does not fit: " + "; ".join(cand.plan.problems),
                       "pick a quant marked yes, or lower the context")  # fmt: skip
            return
        if self.choice is not None and cand.source.name == self.choice.quant:
            self.open_plan(self.choice)
        else:
            self.query_one("#status", Static).update(f"Planning {cand.source.name}…")
            self.plan_quant(*wanted, cand.source.name)

    @work(thread=True, exclusive=True, group="plan")
    def plan_quant(self, ctx: int, kv: str, quant: str) -> None:
        """Another quant than the chosen one: the pipeline's plan of it, pinned, then its screen."""
        from launcher.errors import RunqError
        from launcher.tui.data import plan_target

        try:
            planned, _, problem = plan_target(self.machine, self.target, ctx, kv, project=True, quant=quant)
        except RunqError as e:
            planned, problem = None, e.message
        if planned is None:
            self.app.call_from_thread(self.query_one("#status", Static).update, f"[red]{problem}[/red]")
            return
        self.app.call_from_thread(self.open_plan, planned)

    def open_plan(self, planned: Planned) -> None:
        from launcher.tui.plan_screen import PlanScreen

        self.app.push_screen(PlanScreen(planned))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_plan()
