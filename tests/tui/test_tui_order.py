"""The models list's order and feedback, driven by Textual's Pilot: a quant on disk that fits comes before the
catalog models that do not, a line says the list is being planned while it is blank, Home and End move the
row cursor."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from launcher.catalog.profiles import load_profiles
from launcher.machine.spec import MachineSpec
from launcher.measure.synth import SynthSpec, write_model
from launcher.tui.app import RunqApp
from launcher.tui.quants_screen import QuantsScreen

NO_GPU = {"gpus": [], "ram": "8GiB", "cores": 2}  # no catalog model fits there; a small file does


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def on_disk() -> Path:
    snap = Path(os.environ["HF_HUB_CACHE"]) / "models--someone--Tiny-MoE-GGUF" / "snapshots" / "abc"
    return write_model(SynthSpec(arch="qwen3moe", n_layer=3), snap / "Tiny-MoE-Q8_0.gguf").path


def app(machine: dict[str, object] = NO_GPU) -> RunqApp:
    return RunqApp(MachineSpec.model_validate(machine).to_machine())


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def cells(table: DataTable[object]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.anyio
async def test_a_quant_on_disk_that_fits_comes_before_what_does_not_fit(on_disk: Path) -> None:
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        rows = cells(a.screen.query_one(DataTable))
        fits = [r[2] for r in rows]
        assert fits[0] == "RAM" and rows[0][0] == "someone/Tiny-MoE-GGUF Q8_0", rows[:3]
        assert set(fits[1:]) == {"does not fit"} and len(rows) == len(load_profiles()) + 1  # the catalog and the file
        await pilot.press("enter")  # the first row is the one that fits: it opens
        await settle(pilot)
        assert isinstance(a.screen, QuantsScreen) and a.screen.target.model_path == on_disk.resolve()


@pytest.mark.anyio
async def test_home_and_end_move_the_row_cursor(on_disk: Path) -> None:
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = a.screen.query_one(DataTable)
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1 > 0
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.press("enter")
        await settle(pilot)
        quants = a.screen.query_one(DataTable)
        assert isinstance(a.screen, QuantsScreen) and quants.has_focus
        await pilot.press("end")
        assert quants.cursor_row == quants.row_count - 1


@pytest.mark.anyio
async def test_the_blank_list_says_it_is_being_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.tui import data

    planned, release = threading.Event(), threading.Event()
    real = data.model_rows

    def held(machine: object) -> object:
        rows = real(machine)  # type: ignore[arg-type]
        planned.set()
        release.wait(60)  # the list stays blank until the test has looked at it
        return rows

    monkeypatch.setattr(data, "model_rows", held)
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert a.screen.query_one(DataTable).row_count == 0
        assert "Planning every model for this machine" in str(a.screen.query_one("#status", Static).render())
        release.set()
        await settle(pilot)
        assert planned.is_set() and a.screen.query_one(DataTable).row_count == len(load_profiles())
        assert "Enter opens one" in str(a.screen.query_one("#status", Static).render())
