"""The server that will really run (plan/serving.py): slots and the lookup tables llama.cpp reads on demand.

The figures are llama-server's own allocations (`llama_kv_cache: size =` / `llama_memory_recurrent: size =` lines at
-lv 4, build 0c1e570) for the same generated models at -c 4096, -ub 512; tests/e2e/test_serving_real.py runs the
servers again for the ones the issue names.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from launcher.catalog.sources import ModelSource
from launcher.errors import DoesNotFitError, UsageError
from launcher.llama.argv import bench_argv, fit_flags, placement_flags
from launcher.machine.spec import CPU, GPU, Machine
from launcher.measure.synth import SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.model.tensors import Role, TensorSet
from launcher.plan import serving
from launcher.plan.choose import choose, max_fitting_ctx
from launcher.plan.inputs import PlanInputs, planning_request, split_extra
from launcher.plan.kv_cache import kv_layout
from launcher.plan.place import beyond_every_budget, plan
from launcher.plan.projection import DeviceRow, Projection, SizeBook
from launcher.plan.types import Request
from launcher.units import GiB, MiB
from launcher.view.plan import memory_table, plan_json

BASE = SynthSpec(n_layer=6, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16, n_head_kv=2, head_dim=64)
SPECS = {
    "gpt-oss": BASE.with_(arch="gpt-oss", sliding_window=512),  # SWA on every other layer, a window of 512
    "qwen35moe": BASE.with_(arch="qwen35moe", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),
    "deepseek4": BASE.with_(arch="deepseek4"),
    "qwen4exp": BASE.with_(arch="qwen4exp", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serving")
    return {a: write_model(s, d / f"{a}.gguf").path for a, s in SPECS.items()}


def cpu_machine(ram: int = 64 * GiB, gpus: tuple[GPU, ...] = ()) -> Machine:
    return Machine(gpus=gpus, ram_total_bytes=ram, ram_available_bytes=ram, source="described",
                   cpu=CPU(physical_cores=16))  # fmt: skip


# --- slots ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "ubatch", "slots", "cells"),
    [(128, 512, 4, 1024), (128, 512, 1, 768), (512, 512, 4, 2560), (512, 512, 1, 1024), (128, 2048, 2, 2304),
     (0, 512, 4, 0)],
)  # fmt: skip
def test_window_cells_of_a_unified_cache(window: int, ubatch: int, slots: int, cells: int) -> None:
    """PAD256(window x slots + ubatch): the SWA cells llama-server allocated (notes/23-research.md §4 table)."""
    assert serving.window_cells(window, ubatch, slots) == cells


@pytest.mark.parametrize(
    ("arch", "mib"),
    [
        ("gpt-oss", {1: 7.50, 4: 9.75}),  # full 6.00 + SWA 1.50 (1,024 cells) / 3.75 (2,560 cells)
        ("qwen35moe", {1: 4.11, 2: 4.22, 4: 4.45}),  # full 4.00 + recurrent 0.11 per slot
        ("qwen4exp", {1: 5.15, 2: 5.29}),  # QSA + indexer caches, DeltaNet state per slot
    ],
)
def test_kv_for_n_slots_is_what_llama_server_allocates(
    arch: str, mib: dict[int, float], files: dict[str, Path]
) -> None:
    hp = open_local(files[arch]).hparams
    for slots, want in mib.items():
        got = kv_layout(hp, ubatch=512, slots=slots).bytes_for(4096) / MiB
        assert got == pytest.approx(want, abs=0.01), slots


def test_deepseek4_keeps_a_stream_per_slot(files: dict[str, Path]) -> None:
    """Its caches ignore -kvu (`2/2 seqs` at -np 2 -kvu: 0.56 + 0.38 + 0.06 + 0.38 MiB, each twice)."""
    hp = open_local(files["deepseek4"]).hparams
    one, two = (kv_layout(hp, ubatch=512, slots=n).bytes_for(4096) for n in (1, 2))
    assert two == 2 * one


def test_size_book_adds_the_slots_to_a_one_slot_projection(files: dict[str, Path]) -> None:
    """llama-fit-params projects one slot (no -kvu): runq's formula adds the other slots' windows, and the bigger
    mask over them to the compute buffer (10.02 -> 11.52 MiB measured), and says so."""
    hp = open_local(files["gpt-oss"]).hparams
    proj = Projection("0c1e570", 4096, 512, "f16", "f16", (DeviceRow("CPU", 20 * MiB, 7 * MiB, 10 * MiB),))
    one = SizeBook(hp, 4096, "f16", "f16", 512, (proj,))
    four = SizeBook(hp, 4096, "f16", "f16", 512, (proj,), slots=4)
    assert one.kv_bytes() == int(7.5 * MiB) and one.kv_source == proj.source
    assert four.kv_bytes() == int(9.75 * MiB)
    assert four.kv_source.startswith(proj.source) and "runq's formula for 4" in four.kv_source
    c1, _ = one.cpu_compute(with_gpus=False)
    c4, src = four.cpu_compute(with_gpus=False)
    assert c4 - c1 == int(1.5 * MiB) and "4 slots" in src
    assert four.cpu_compute(with_gpus=True) == one.cpu_compute(with_gpus=True)  # the CPU beside GPUs: no attention


def test_slots_in_the_plan_and_the_commands(files: dict[str, Path]) -> None:
    m = open_local(files["gpt-oss"])
    p1 = plan(cpu_machine(), m.tensors, m.hparams, Request(ctx=4096))
    p4 = plan(cpu_machine(), m.tensors, m.hparams, Request(ctx=4096, slots=4))
    assert (p1.slots, p1.kv_unified, p4.slots, p4.kv_unified) == (1, False, 4, True)
    assert p4.cpu.kv_bytes - p1.cpu.kv_bytes == int(2.25 * MiB)
    server = placement_flags(p4, "server")
    assert server[server.index("-np") + 1] == "4" and "-kvu" in server
    assert placement_flags(p1, "server")[-2:] == ["-np", "1"] and "-kvu" not in placement_flags(p1, "server")
    assert "-np" not in fit_flags(p4)  # one slot projected; the difference is runq's
    assert "-np" not in bench_argv("llama-bench", "m.gguf", p4, pp=512, tg=16, reps=1)
    assert plan_json(p4)["slots"] == 4 and plan_json(p4)["kv_unified"] is True
    assert any("4 server slots" in r for r in p4.reasons) and any("1 server slot" in r for r in p1.reasons)
    old = {"load_mode": True, "cache_ram": True}  # a manifest written before runq looked for -np: the pin has it
    assert "-np" in placement_flags(p1, "server", old)
    assert "-np" not in placement_flags(p1, "server", {**old, "parallel": False})


def test_slot_inputs_are_checked() -> None:
    assert planning_request(PlanInputs(parallel=4), default_ctx=4096, buffers=("CPU",)).slots == 4
    assert planning_request(PlanInputs(), default_ctx=4096, buffers=("CPU",)).slots == serving.DEFAULT_SLOTS == 1
    with pytest.raises(UsageError, match="a chat"):
        planning_request(PlanInputs(parallel=2, server=False), default_ctx=4096, buffers=("CPU",))
    with pytest.raises(UsageError, match="between 1"):
        planning_request(PlanInputs(parallel=0), default_ctx=4096, buffers=("CPU",))
    pins, rest = split_extra(["-np", "3", "-lzm", "on", "--temp", "0.5"])
    assert pins == {"parallel": 3, "lazy_mode": "on"} and rest == ["--temp", "0.5"]
    inputs = PlanInputs().pinned(pins)
    req = planning_request(inputs, default_ctx=4096, buffers=("CPU",))
    assert (req.slots, req.lazy_mode) == (3, "on")
    with pytest.raises(UsageError, match="lazy mode"):
        planning_request(PlanInputs(lazy_mode="sometimes"), default_ctx=4096, buffers=("CPU",))
    with pytest.raises(UsageError, match="runq sets it itself") as e:
        split_extra(["--no-kv-unified"])
    assert "--parallel N" in (e.value.hint or "")


# --- lazy lookup tables ----------------------------------------------------------------------------------------


def _with_table(tensors: TensorSet, table_bytes: int) -> TensorSet:
    """The generated qwen4exp's tensors with its n-gram table as large as a real one (the planner reads sizes)."""
    return TensorSet(tuple(replace(t, nbytes=table_bytes) if t.role is Role.LAZY_TABLE else t for t in tensors.tensors))


def test_lazy_modes_follow_llama_cpp(files: dict[str, Path]) -> None:
    t = open_local(files["qwen4exp"]).tensors
    assert serving.lazy_tables(t) == ("per_layer_token_embd.weight",)
    big = _with_table(t, 5 * GiB)
    assert serving.read_on_demand(t, "auto") == () and serving.read_on_demand(big, "auto") == t.lazy_tables
    assert serving.read_on_demand(t, "on") == t.lazy_tables and serving.read_on_demand(big, "off") == ()


def test_a_big_table_is_disk_and_page_cache_not_ram(files: dict[str, Path]) -> None:
    """auto reads a table over 4 GiB on demand: the CPU's budget leaves it out (it would not fit resident), the
    memory table shows it on its own line, --json says so, and the command passes -lzm auto."""
    m = open_local(files["qwen4exp"])
    t = _with_table(m.tensors, 20 * GiB)
    p = plan(cpu_machine(ram=16 * GiB), t, m.hparams, Request(ctx=4096))
    assert p.fits and p.lazy_mode == "auto" and p.lazy_tables == ("per_layer_token_embd.weight",)
    assert p.cpu.lazy_bytes == 20 * GiB and p.cpu.weights_bytes < GiB and p.cpu.used_bytes < p.cpu.budget_bytes
    assert p.placement["per_layer_token_embd.weight"] == "CPU"
    lazy_line = memory_table(p)[-1]
    assert lazy_line.split()[:3] == ["lazy", "20.0", "GiB"] and "not counted in RAM" in lazy_line
    j = plan_json(p)["lazy_tables"]
    assert j == {"mode": "auto", "tensors": ["per_layer_token_embd.weight"], "bytes": 20 * GiB}
    assert placement_flags(p, "server")[-2:] == ["-lzm", "auto"] and fit_flags(p)[-2:] == ["-lzm", "auto"]
    assert any("lazy tables" in r and "not as RAM" in r for r in p.reasons)
    off = plan(cpu_machine(ram=16 * GiB), t, m.hparams, Request(ctx=4096, lazy_mode="off"))
    assert not off.fits and off.cpu.lazy_bytes == 0  # resident, it does not fit: what runq used to say


def test_a_small_table_is_read_on_demand_only_when_ram_is_short(files: dict[str, Path]) -> None:
    """Under 4 GiB llama.cpp keeps a table resident by default (on demand costs it more): runq passes -lzm on
    only when the CPU part fits the RAM no other way."""
    m = open_local(files["qwen4exp"])
    t = _with_table(m.tensors, 3 * GiB)
    roomy = plan(cpu_machine(ram=32 * GiB), t, m.hparams, Request(ctx=4096))
    assert roomy.fits and roomy.lazy_mode == "auto" and roomy.lazy_tables == () and roomy.cpu.weights_bytes > 3 * GiB
    # 7 GiB: a 4 GiB margin and llama-server's prompt cache at its least (1 GiB) leave 2 GiB, not the table's 3
    short = plan(cpu_machine(ram=7 * GiB), t, m.hparams, Request(ctx=4096))
    assert short.fits and short.lazy_mode == "on" and short.cpu.lazy_bytes == 3 * GiB
    assert any(r.startswith("-lzm on") for r in short.reasons)
    assert placement_flags(short, "server")[-2:] == ["-lzm", "on"]


def test_an_override_does_not_move_a_lazy_table(files: dict[str, Path]) -> None:
    """llama.cpp gives a table it reads on demand the CPU's buffer whatever -ot says (lazy_read::buft)."""
    m = open_local(files["qwen4exp"])
    gpu = GPU(index=0, name="described", total_bytes=8 * GiB, free_bytes=8 * GiB)
    req = planning_request(PlanInputs(ot=("per_layer_token_embd=CUDA0",), lazy_mode="on"), default_ctx=4096,
                           buffers=("CPU", "CUDA0"))  # fmt: skip
    p = plan(cpu_machine(gpus=(gpu,)), m.tensors, m.hparams, req)
    assert p.placement["per_layer_token_embd.weight"] == "CPU" and p.cpu.lazy_bytes > 0


def test_the_qwen38_plan_fits_with_its_table_on_disk() -> None:
    """The issue's case: Qwen3.8-Flash-Next on a 16 GiB GPU and 64 GiB of RAM fits a quant whose 26.8 GiB table
    would not fit in RAM resident."""
    from launcher.catalog.profiles import require_profile
    from launcher.catalog.sources import profile_sources

    profile = require_profile("qwen3.8-flash-next")
    gpu = GPU(index=0, name="described", total_bytes=16 * GiB, free_bytes=16 * GiB)
    m = cpu_machine(ram=64 * GiB, gpus=(gpu,))
    choice = choose(profile.name, m, profile_sources(profile), Request(ctx=profile.default_ctx))
    p = choice.chosen.plan
    assert choice.chosen.source.name == "UD-IQ4_XS" and p.fits and p.lazy_mode == "auto"
    assert p.cpu.weights_bytes + p.cpu.lazy_bytes > p.cpu.budget_bytes  # resident, the table would not fit
    table = [ln for ln in memory_table(p) if ln.split()[0] == "lazy"]
    assert len(table) == 1 and "26.8 GiB" in table[0]
    flags = placement_flags(p, "server")
    assert flags[flags.index("-lzm") + 1] == "auto" and flags[flags.index("-np") + 1] == "1"
    assert flags[flags.index("-lm") + 1] == "none"  # the experts read into RAM; the table stays mapped
    assert any("mapped even with -lm none" in r for r in p.reasons)


def test_beyond_every_budget(files: dict[str, Path]) -> None:
    """The fast path `runq models` takes for a quant no placement can fit: the same plan the full search makes."""
    m = open_local(files["qwen4exp"])
    tiny = cpu_machine(ram=16 * MiB)  # the model is 32 MiB
    assert beyond_every_budget(tiny, m.tensors) and not beyond_every_budget(cpu_machine(), m.tensors)
    src = ModelSource("q", m.tensors, m.hparams, True, m.file_bytes)
    with pytest.raises(DoesNotFitError, match="does not fit") as e:
        choose("q", tiny, [src], Request(ctx=4096))
    assert e.value.hint and "fits with --ctx" not in e.value.hint  # no context would: none searched for
    assert max_fitting_ctx(tiny, src, Request(ctx=4096)) is None
    big = _with_table(m.tensors, 20 * GiB)
    assert not beyond_every_budget(cpu_machine(ram=16 * GiB), big)  # the table is not resident


def test_verification_counts_the_tables_as_llama_cpp_reports_them(files: dict[str, Path]) -> None:
    """llama.cpp maps a table it reads on demand as a model buffer of its own (`CPU_Mapped … 68.00 MiB` beside the
    other CPU tensors': 31.79 MiB read into RAM with -lm none, or their whole mapped file range with mmap), and
    prints the recurrent state as an RS buffer: the check adds both, so nothing runq caused reads as an error."""
    from launcher.llama import log as llama_log

    m = open_local(files["qwen4exp"])
    p = plan(cpu_machine(), m.tensors, m.hparams, Request(ctx=4096, lazy_mode="on", load_mode="none"))
    table = m.tensors["per_layer_token_embd.weight"].nbytes
    assert p.cpu.lazy_bytes == table and p.load_mode == "none"
    text = "\n".join([
        "load_tensors: loading model tensors, this can take a while... (mmap = false, direct_io = false)",
        f"load_tensors:          CPU model buffer size = {p.cpu.weights_bytes / MiB:.2f} MiB",
        f"load_tensors:   CPU_Mapped model buffer size = {table / MiB:.2f} MiB",
        f"llama_kv_cache:        CPU KV buffer size = {(p.cpu.kv_bytes - 0.11 * MiB) / MiB:.2f} MiB",
        "llama_memory_recurrent:        CPU RS buffer size =     0.11 MiB",
        f"sched_reserve:        CPU compute buffer size = {p.cpu.compute_bytes / MiB:.2f} MiB",
    ])  # fmt: skip
    check = llama_log.verify(p, llama_log.parse(text), has_gpu=False, tensors=m.tensors)
    weights = next(ln for ln in check.lines if "weights" in ln)
    assert "+0.0%" in weights and "lookup tables mapped on demand" in weights
    assert not any("please report" in ln for ln in check.lines), check.lines


def test_the_tui_shows_the_tables_beside_the_bars(files: dict[str, Path]) -> None:
    from launcher.tui.plan_screen import memory_text

    m = open_local(files["qwen4exp"])
    p = plan(cpu_machine(ram=16 * GiB), _with_table(m.tensors, 20 * GiB), m.hparams, Request(ctx=4096))
    text = memory_text(p).plain
    assert (
        "lazy" in text and "20.0 GiB lookup tables, memory-mapped (-lzm auto)" in text and "not counted in RAM" in text
    )
    assert "lookup tables" not in memory_text(plan(cpu_machine(), m.tensors, m.hparams, Request(ctx=4096))).plain
