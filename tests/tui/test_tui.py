"""The TUI driven by Textual's Pilot, and snapshots of its main screens at 80x24 and 120x40."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from launcher.machine.spec import MachineSpec
from launcher.tui.app import RunqApp
from launcher.tui.dialogs import ErrorDialog, HelpScreen, TextDialog
from launcher.tui.models_screen import ModelsScreen
from launcher.tui.plan_screen import PlanScreen
from launcher.tui.quants_screen import QuantsScreen


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MACHINE = {"gpus": [{"memory": "24GiB", "name": "RTX 4090"}], "ram": "256GiB", "cores": 16}


def app(machine: dict[str, object] = MACHINE) -> RunqApp:
    return RunqApp(MachineSpec.model_validate(machine).to_machine())


async def settle(pilot: Pilot[object]) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def rows(table: DataTable[object]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def select(table: DataTable[object], title: str) -> list[str]:
    """Move the cursor to the model row with this title; its cells."""
    found = [r[0] for r in rows(table)]
    table.move_cursor(row=found.index(title))
    return rows(table)[found.index(title)]


@pytest.mark.anyio
async def test_pick_a_model_change_the_context_open_the_plan() -> None:
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert isinstance(a.screen, ModelsScreen)
        models = rows(a.screen.query_one(DataTable))
        fitting = [r for r in models if r[1] != "-"]
        assert models[: len(fitting)] == fitting  # what fits comes first
        assert select(a.screen.query_one(DataTable), "DeepSeek-V3.1")[:3] == [
            "DeepSeek-V3.1",
            "UD-IQ3_XXS",
            "GPU + RAM",
        ]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(a.screen, QuantsScreen)
        table = a.screen.query_one(DataTable)
        before = rows(table)
        assert len(before) == 13 and before[6][0] == "★" and "UD-IQ3_XXS" in before[6][1]
        # A longer context: more KV cache and compute on the GPU, so less fits and the table changes.
        ctx = a.screen.query_one("#ctx", Input)
        ctx.value = "32768"
        await settle(pilot)
        after = rows(table)
        assert after != before
        assert "32,768 tokens" in str(a.screen.query_one("#status", Static).render())
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(a.screen, PlanScreen)
        assert a.screen.cand.plan.ctx == 32768
        assert "-c 32768" in str(a.screen.query_one("#command", Static).render())
        await pilot.press("l")  # dry-run launch: the steps and the exact command, nothing run
        await pilot.pause()
        assert isinstance(a.screen, TextDialog)
        assert "start: llama-server" in a.screen.text and "download deepseek-v3.1" in a.screen.text
        await pilot.press("escape")
        await pilot.press("t")  # chat: leave the TUI and hand the terminal to `runq run … --auto`
        await pilot.pause()
    assert a.return_value == ["run", "deepseek-v3.1", "--ctx", "32768", "--quant", a.return_value[5], "--auto"]


@pytest.mark.anyio
async def test_nothing_fits_says_why() -> None:
    # 24 GiB + 150 GiB: the smallest quant fits at 16K; at 163,840 tokens its KV cache (10.7 GiB) does not.
    a = app({**MACHINE, "ram": "150GiB"})
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        select(a.screen.query_one(DataTable), "DeepSeek-V3.1")
        await pilot.press("enter")
        await settle(pilot)
        a.screen.query_one("#ctx", Input).value = "163840"
        await settle(pilot)
        status = str(a.screen.query_one("#status", Static).render())
        assert "no quant of" in status and "fits this machine at 163,840 tokens" in status, status
        assert "★" not in status and "the largest that fits" not in status
        await pilot.press("enter")  # a row that does not fit: a dialog, not a plan
        await pilot.pause()
        assert isinstance(a.screen, ErrorDialog)


@pytest.mark.anyio
async def test_a_corrupt_local_gguf_opens_an_error_dialog(tmp_path: Path, models: dict[str, object]) -> None:
    import os

    snap = Path(os.environ["HF_HUB_CACHE"]) / "models--someone--Broken-GGUF" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    good = models["qwen3moe-q8"].path  # type: ignore[attr-defined]
    (snap / "Broken-Q8_0.gguf").write_bytes(good.read_bytes()[:3000])
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = a.screen.query_one(DataTable)
        keys = [r[0] for r in rows(table)]
        assert "someone/Broken-GGUF Q8_0" in keys
        assert rows(table)[keys.index("someone/Broken-GGUF Q8_0")][2] == "damaged"
        table.move_cursor(row=keys.index("someone/Broken-GGUF Q8_0"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(a.screen, ErrorDialog)
        assert "Broken-Q8_0.gguf" in a.screen.message and "past the end of the file" in a.screen.message
        assert a.screen.hint and "runq pull" in a.screen.hint
        await pilot.press("escape")
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(a.screen, HelpScreen)


@pytest.mark.anyio
async def test_a_home_server_sees_several_models_that_fit_first() -> None:
    home = {"gpus": [{"memory": "24GiB", "name": "RTX 3090"}], "ram": "64GiB", "cores": 8}
    a = RunqApp(MachineSpec.model_validate(home).to_machine())
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        models = rows(a.screen.query_one(DataTable))
        fitting = [r for r in models if r[1] != "-"]
        assert len(fitting) >= 5 and models[: len(fitting)] == fitting
        assert "gpt-oss-120b" in [r[0] for r in fitting]
        assert all(r[2] in ("GPU", "GPU + RAM") for r in fitting)
        assert models[len(fitting)][2] == "does not fit"


# --- snapshots ------------------------------------------------------------------------------------


async def _wait(pilot: Pilot[object]) -> None:
    await settle(pilot)


async def _to_quants(pilot: Pilot[object]) -> None:
    await settle(pilot)
    await pilot.press("enter")
    await settle(pilot)


async def _to_plan(pilot: Pilot[object]) -> None:
    await _to_quants(pilot)
    await pilot.press("enter")
    await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
@pytest.mark.parametrize("screen", ["models", "quants", "plan"])
def test_snapshots(snap_compare, screen: str, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    run_before = {"models": _wait, "quants": _to_quants, "plan": _to_plan}[screen]
    assert snap_compare(app(), terminal_size=size, run_before=run_before)


def test_non_tui_commands_do_not_import_textual() -> None:
    probe = (
        "import sys, json\nfrom launcher.cli.main import main\n"
        "main(['hw', '--gpu', '24GiB', '--ram', '64GiB', '--json'])\n"
        "print(json.dumps('textual' in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout.strip().splitlines()[-1]) is False
