"""Plan: what goes where, memory per device as bars, predicted speed, the exact command — and the actions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from launcher.llama.argv import shell_quote
from launcher.plan.inputs import ServerOptions
from launcher.units import fmt_bytes
from launcher.view.plan import placement_lines, source_lines

if TYPE_CHECKING:
    from launcher.pipeline.plan import Planned
    from launcher.plan.types import DevicePlan, Plan

BAR = 40
# Segment styles read on dark and light terminals alike (they are backgrounds, not text colours).
SEGMENTS = (("weights", "on blue"), ("KV", "on magenta"), ("compute", "on dark_orange"), ("other", "on grey50"),
            ("margin", "on grey30"))  # fmt: skip


def memory_bar(d: DevicePlan) -> Text:
    parts = (d.weights_bytes, d.kv_bytes, d.compute_bytes, d.extra_bytes, d.margin_bytes)
    total = max(d.capacity_bytes, sum(parts), 1)
    bar = Text()
    used = 0
    for (_, style), n in zip(SEGMENTS, parts, strict=True):
        cells = round(n * BAR / total)
        bar.append(" " * cells, style=style)
        used += cells
    bar.append("·" * max(0, BAR - used), style="dim")
    return bar


def memory_text(plan: Plan) -> Text:
    out = Text()
    legend = Text("  ")
    for name, style in SEGMENTS:
        legend.append("  ", style=style)
        legend.append(f" {name}  ")
    legend.append("· free")
    out.append_text(legend)
    out.append("\n")
    for d in plan.devices:
        out.append(f"  {d.name:<6} ")
        out.append_text(memory_bar(d))
        flag = "" if d.fits else "  DOES NOT FIT"
        out.append(f" {fmt_bytes(d.used_bytes)} of {fmt_bytes(d.budget_bytes)}{flag}\n")
        out.append(f"  {segment_numbers(d)}\n", style="dim")
    lazy = plan.cpu.lazy_bytes
    if lazy:  # in no device's bar: on disk, read a few rows per token (plan/serving.py)
        out.append(f"  {'lazy':<6} ")
        out.append(" " * max(1, round(lazy * BAR / max(plan.cpu.capacity_bytes, lazy))), style="on dark_green")
        out.append(f" {fmt_bytes(lazy)} lookup tables, memory-mapped (-lzm {plan.lazy_mode})\n")
        out.append("  read a few rows per token from disk: page cache, not counted in RAM\n", style="dim")
    return out


def segment_numbers(d: DevicePlan) -> str:
    """The bar's segments in numbers (GiB), in the bar's order: what the colours alone cannot say."""
    parts = (d.weights_bytes, d.kv_bytes, d.compute_bytes, d.extra_bytes, d.margin_bytes)
    free = max(0, d.capacity_bytes - sum(parts))
    cells = [f"{name} {n / 2**30:.1f}" for (name, _), n in zip(SEGMENTS, parts, strict=True)]
    return "GiB: " + ", ".join([*cells, f"free {free / 2**30:.1f}"])


def _short(arg: str) -> str:
    """Paths under the current directory or home, shortened for reading (the copy keeps them whole)."""
    from pathlib import Path

    if not arg.startswith("/"):
        return arg
    cwd, home = str(Path.cwd()), str(Path.home())
    if arg.startswith(cwd + "/"):
        return arg[len(cwd) + 1 :]
    if arg.startswith(home + "/"):
        return "~" + arg[len(home) :]
    return arg


class PlanScreen(Screen[None]):
    BINDINGS = [
        Binding("y", "copy", "Copy"),
        Binding("l", "dry_run", "Dry run"),
        Binding("d", "download", "Download"),
        Binding("b", "build", "Build"),
        Binding("t", "chat", "Chat"),
        Binding("s", "server", "Server"),
        Binding("i", "service", "Service"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("question_mark", "app.help", "Help", show=False),
    ]

    def __init__(self, planned: Planned) -> None:
        super().__init__()
        self.planned = planned
        self.target, self.cand, self.machine = planned.target, planned.chosen, planned.machine

    def command(self) -> list[str]:
        """The command `runq plan` prints for the same inputs (the pipeline's)."""
        from launcher.pipeline.plan import command, model_path

        path = model_path(self.planned)
        shown = path if Path(path).is_file() else f"<{self.planned.quant} after download>"
        return command(self.planned, server=ServerOptions(), model=shown)

    def compose(self) -> ComposeResult:
        p = self.cand.plan
        yield Header()
        with VerticalScroll():
            title = Text()
            title.append(f"{self.target.name} {self.cand.source.name}", style="bold")
            title.append(f": {p.ctx:,} tokens of context, ")
            title.append(f"{p.predicted_tg_tps:.1f} tokens/s", style="bold")
            title.append(f" predicted ({'exact' if self.cand.source.exact else 'estimated'} sizes)")
            yield Static(title, id="plan-title")
            yield Static("[b]Where the tensors go[/b]", classes="section")
            yield Static(
                "\n".join(f"  {x}" for x in placement_lines(p)) or "  everything on one device", id="placement"
            )
            yield Static("[b]Memory per device[/b]", classes="section")
            yield Static(memory_text(p), id="memory")
            yield Static("  sizes: " + "; ".join(source_lines(self.cand)), id="sources", markup=False)
            yield Static(Text.assemble(("Command", "bold"), " (y copies it, with full paths)"), classes="section")
            yield Static(shell_quote([_short(a) for a in self.command()]), id="command", markup=False)
        yield Footer()

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(shell_quote(self.command()))
        # The request goes to the terminal (OSC 52), which answers nothing: say what was done, not more.
        self.notify("Asked the terminal to copy the command (OSC 52). If nothing was copied, your terminal "
                    "does not allow it: select the command on screen instead.", timeout=8)  # fmt: skip

    def _run_args(self) -> list[str]:
        """The model, its plan's pins, and the machine the plan was made for (a described one included)."""
        key = str(self.target.model_path) if self.target.model_path else self.target.key
        args = [key, "--ctx", str(self.cand.plan.ctx)]
        if not self.target.model_path:
            args += ["--quant", self.cand.source.name]
        p = self.cand.plan
        if (p.cache_type_k, p.cache_type_v) != ("f16", "f16"):  # the KV cache type chosen on the Quants screen
            args += ["-ctk", p.cache_type_k, "-ctv", p.cache_type_v]
        flags: tuple[str, ...] = getattr(self.app, "machine_flags", ())
        return [*args, *flags]

    def action_dry_run(self) -> None:
        from launcher.tui.dialogs import TextDialog

        steps = []
        if not self.target.model_path:
            steps.append(f"download {self.target.key} {self.cand.source.name} if it is not on disk")
        steps.append("build llama.cpp for this machine if no build is cached")
        steps.append("start: " + shell_quote(self.command()))
        self.app.push_screen(TextDialog("Dry run: runq would", "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))))

    def action_download(self) -> None:
        if self.target.model_path:
            self.notify("This model is a local file: nothing to download")
            return
        from launcher.tui.task_screen import DownloadTask

        self.app.push_screen(DownloadTask(self.target.key, self.cand.source.name))

    def action_build(self) -> None:
        from launcher.tui.task_screen import BuildTask

        self.app.push_screen(BuildTask())

    def action_chat(self) -> None:
        self.app.exit(["run", *self._run_args(), "--auto"])

    def _port(self) -> list[str]:
        port: int | None = getattr(self.app, "port", None)
        return ["--port", str(port)] if port is not None else []

    def action_server(self) -> None:
        self.app.exit(["run", *self._run_args(), "--auto", "--server", *self._port()])

    def action_service(self) -> None:
        self.app.exit(["service", "install", *self._run_args(), *self._port()])
