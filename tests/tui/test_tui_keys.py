"""The TUI's keyboard paths, driven by Textual's Pilot: a typed context confirmed with Enter, the KV-cache list by
keyboard, a described machine's hand-over, `r` without a network, the copy message, the help at 80 and 120
columns, numbers on the memory bars."""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from launcher.machine.spec import MachineSpec
from launcher.tui.app import RunqApp, machine_flags
from launcher.tui.dialogs import HELP, HelpScreen
from launcher.tui.models_screen import ModelsScreen
from launcher.tui.plan_screen import PlanScreen
from launcher.tui.quants_screen import QuantsScreen

MACHINE = {"gpus": [{"memory": "24GiB", "name": "RTX 4090"}], "ram": "256GiB", "cores": 16}
DESCRIBED = ("--gpu", "24GiB", "--ram", "256GiB", "--cores", "16")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app(flags: tuple[str, ...] = (), machine: dict[str, object] = MACHINE) -> RunqApp:
    return RunqApp(MachineSpec.model_validate(machine).to_machine(), flags)


async def settle(pilot: Pilot[object]) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def to_quants(pilot: Pilot[object]) -> None:
    await settle(pilot)
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(pilot.app.screen, QuantsScreen)


def notes(a: RunqApp) -> list[str]:
    return [str(n.message) for n in a._notifications]


@pytest.mark.anyio
async def test_a_typed_context_confirmed_with_enter_opens_the_plan_at_that_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from launcher.tui import data

    real = data.plan_target

    def slow_plan(*args: object, **kwargs: object) -> object:
        time.sleep(0.3)  # a slow machine (or a big model): Enter comes before the re-plan is done
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(data, "plan_target", slow_plan)
    a = app(machine={"gpus": [{"memory": "80GiB"}] * 2, "ram": "512GiB", "cores": 32})  # 131072 fits there
    async with a.run_test(size=(100, 30)) as pilot:
        await to_quants(pilot)
        await pilot.press("c")
        ctx = a.screen.query_one("#ctx", Input)
        assert ctx.has_focus
        await pilot.press(*["backspace"] * 8, *"131072", "enter")  # Enter at once, before the re-plan is done
        await settle(pilot)
        assert isinstance(a.screen, PlanScreen), type(a.screen).__name__
        assert a.screen.cand.plan.ctx == 131072
        assert "-c 131072" in str(a.screen.query_one("#command", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        box = a.screen.query_one("#ctx", Input)
        assert box.value == "131072" and box.content_region.width >= len("131072") + 1  # all of it, and the cursor


@pytest.mark.anyio
async def test_the_kv_cache_type_is_chosen_by_keyboard() -> None:
    a = app()
    async with a.run_test(size=(100, 30)) as pilot:
        await to_quants(pilot)
        kv = a.screen.query_one("#kv", Select)
        await pilot.press("k")
        assert kv.has_focus and kv.value == "f16"
        await pilot.press("enter")  # opens the list
        await pilot.pause()
        assert kv.expanded
        await pilot.press("down", "enter")  # the next type, picked with Enter (not the plan opening)
        await settle(pilot)
        assert isinstance(a.screen, QuantsScreen) and not kv.expanded
        chosen = str(kv.value)
        assert chosen != "f16"
        await pilot.press("tab")  # on to the table, then Enter opens that row's plan with the chosen type
        assert a.screen.query_one("#quants").has_focus
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(a.screen, PlanScreen)
        assert a.screen.cand.plan.cache_type_k == chosen
        await pilot.press("t")
        await pilot.pause()
    argv = a.return_value
    assert argv is not None and argv[argv.index("-ctk") :] == ["-ctk", chosen, "-ctv", chosen, "--auto"]


@pytest.mark.anyio
async def test_a_described_machine_is_handed_over_with_its_flags() -> None:
    for key, verb in (("s", ["run"]), ("i", ["service", "install"])):
        a = app(DESCRIBED)
        async with a.run_test(size=(100, 30)) as pilot:
            await to_quants(pilot)
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(a.screen, PlanScreen)
            await pilot.press(key)
            await pilot.pause()
        argv = a.return_value
        assert argv is not None and argv[: len(verb)] == verb
        at = argv.index("--gpu")
        assert argv[at : at + len(DESCRIBED)] == list(DESCRIBED)


def test_machine_flags_are_read_from_the_command_line(tmp_path: object) -> None:
    from launcher.cli.parser import build_parser

    args = build_parser().parse_args(["tui", "--gpu", "24GiB", "--gpu", "2x80GiB", "--ram", "256GiB"])
    assert machine_flags(args) == ("--gpu", "24GiB", "--gpu", "2x80GiB", "--ram", "256GiB")
    assert machine_flags(build_parser().parse_args(["tui"])) == ()


@pytest.mark.anyio
async def test_reading_the_hub_without_a_network_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    a = app()
    async with a.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert isinstance(a.screen, ModelsScreen)
        await pilot.press("r")
        await settle(pilot)
        got = notes(a)
        assert got and "The Hub's headers could not be read for" in got[-1] and "cannot reach" in got[-1]


@pytest.mark.anyio
async def test_copy_says_what_it_did_and_bars_carry_numbers() -> None:
    a = app()
    async with a.run_test(size=(80, 24)) as pilot:
        await to_quants(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(a.screen, PlanScreen)
        memory = a.screen.query_one("#memory", Static)
        text = str(memory.render())
        for d in a.screen.cand.plan.devices:
            assert f"weights {d.weights_bytes / 2**30:.1f}, KV {d.kv_bytes / 2**30:.1f}" in text
        lines = text.split("\n")
        assert memory.size.height == len(lines) and max(len(x) for x in lines) <= memory.size.width  # no wrapping
        await pilot.press("y")
        await pilot.pause()
        assert "Asked the terminal to copy the command" in notes(a)[-1]
        assert "copied to the clipboard" not in notes(a)[-1].lower()


@pytest.mark.anyio
@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_help_does_not_wrap(size: tuple[int, int]) -> None:
    a = app()
    async with a.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(a.screen, HelpScreen)
        shown = a.screen.query_one("#help-text", Static)
        assert shown.size.height == HELP.count("\n") + 1  # one screen line per line of text: nothing wrapped
