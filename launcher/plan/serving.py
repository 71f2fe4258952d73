"""The llama-server that will really run: how many slots it serves, and which lookup tables it reads on demand.

Pure: no I/O. The constants and rules of both, each with its source (the pinned llama.cpp, 0c1e570, and
measurements on generated models); memory.py uses them for the KV cache, projection.SizeBook for the difference
llama-fit-params cannot project, the planner for the CPU's budget, llama/argv.py for the flags.

Slots. llama-server's `-np` auto is 4 slots sharing one unified KV cache (server.cpp:156-161); an explicit `-np N`
gives N streams of n_ctx / N cells unless `-kvu`. runq passes `-np N` (1 unless `--parallel N`), and `-kvu` for
N > 1 so that each slot may use the whole context, as auto does. With one unified cache of C cells:
- full-attention layers keep C cells whatever N;
- sliding-window layers keep PAD256(min(C, window x N + ubatch)) (llama_kv_cache_iswa: the window of every slot);
- recurrent state (linear attention, mamba layers) is one per slot (llama_memory_recurrent: n_seq_max cells);
- deepseek4's caches keep one stream per slot, -kvu or not (llama_kv_cache_dsv4): all of it N times;
- the compute buffer's f16 mask over the sliding-window cells grows with them (ubatch x 2 B per cell).
Measured with llama-server -lv 4 (`llama_kv_cache: size =` lines) on generated models at -c 4096: gpt-oss (window
512) 7.50 MiB at -np 1 and 9.75 at -np 4 -kvu (2,560 sliding-window cells), compute 10.02 / 11.52 MiB; qwen35moe
recurrent state 0.11 / 0.22 / 0.45 MiB at 1 / 2 / 4 slots, full-attention cache 4.00 MiB each time; deepseek4
1.38 MiB at -np 1, 2.75 at -np 2 -kvu. llama-fit-params takes -np but not -kvu (and -np N there means N split
streams): runq projects one slot with it and adds the difference of this formula.

Lazy lookup tables (Role.LAZY_TABLE: per_layer_token_embd of qwen4exp and gemma4, created TENSOR_READ_LAZY): with
`--lazy-mode on` llama.cpp reads their rows on demand from the memory-mapped file; `auto` (its default) only for
tables over 4 GiB (llama_model_loader::lazy_read::add, auto_min_size), smaller ones are loaded like any weight;
`off` never. A lazy table is always on the CPU (lazy_read::buft: no -ot or -ngl moves it) and mapped whatever the
load mode (`-lm none` reads the other tensors into RAM, the lazy ones stay mapped: llama-model.cpp "a lazy context
is mapped whatever the load mode"; mlock skips them). So it costs disk (the file) and page cache (the rows read
lately, which the kernel evicts under pressure), not resident RAM: the planner leaves it out of the CPU's budget.
Measured on a generated qwen4exp with a 68 MiB table: `add: tensor per_layer_token_embd.weight (size = 68 MiB)
lazy read enabled`, and a model buffer of its own (`CPU_Mapped model buffer size = 68.00 MiB`) beside the other
CPU tensors' (31.79 MiB with -lm none; with mmap the mapped file range, the table included when it lies between
them: 99.79 MiB); llama-fit-params counts it in the Host model row (99 MiB).
"""

from __future__ import annotations

from launcher.model.hparams import HParams
from launcher.model.tensors import TensorSet
from launcher.units import GiB, fmt_bytes

# --- slots ---------------------------------------------------------------------------------------------------
# A home server is mostly one person: one slot keeps the whole context and the full decode speed for the
# conversation in hand, and a second request waits its turn (llama-server queues it) instead of halving both and
# sharing the context. `--parallel N` serves N at once.
DEFAULT_SLOTS = 1
MAX_SLOTS = 256
SWA_PAD_CELLS = 256  # llama.cpp pads every cache to 256 cells
SWA_MASK_BYTES = 2  # f16 KQ mask per ubatch token and sliding-window cell
PER_SLOT_STREAMS = frozenset({"deepseek4"})  # caches with one stream per slot whatever -kvu says


def window_cells(window: int, ubatch: int, slots: int = 1) -> int:
    """Cells of a unified sliding-window cache before the cap at the context: the window of every slot plus one
    ubatch, padded (llama_kv_cache_iswa)."""
    if not window:
        return 0
    return -(-(window * slots + ubatch) // SWA_PAD_CELLS) * SWA_PAD_CELLS


def swa_mask_bytes(hp: HParams, ctx: int, ubatch: int, slots: int) -> int:
    """What N unified slots add to a compute buffer that runs sliding-window layers: the f16 mask over the cells
    the other slots' windows add."""
    if slots <= 1 or not hp.sliding_window or hp.arch in PER_SLOT_STREAMS:
        return 0
    more = min(ctx, window_cells(hp.sliding_window, ubatch, slots)) - min(ctx, window_cells(hp.sliding_window, ubatch))
    return ubatch * SWA_MASK_BYTES * max(0, more)


def slots_note(slots: int, ctx: int) -> str:
    """The plan's reason for its slot count."""
    if slots == 1:
        return (f"1 server slot (-np 1): one conversation at a time has the whole {ctx:,}-token context; other "
                "requests wait their turn (--parallel N serves N at once)")  # fmt: skip
    return (f"{slots} server slots sharing one {ctx:,}-token KV cache (-np {slots} -kvu): each may use the whole "
            "context, together no more; sliding-window and recurrent state is kept per slot (counted)")  # fmt: skip


# --- lazy lookup tables ----------------------------------------------------------------------------------------
LAZY_AUTO_MIN_BYTES = 4 * GiB  # --lazy-mode auto reads a table on demand only above this (auto_min_size)


def lazy_tables(tensors: TensorSet) -> tuple[str, ...]:
    """The model's row-lookup tables llama.cpp can read on demand."""
    return tensors.lazy_tables


def read_on_demand(tensors: TensorSet, mode: str) -> tuple[str, ...]:
    """The lookup tables llama.cpp reads on demand under this --lazy-mode (the rest are loaded like weights)."""
    if mode == "off":
        return ()
    return tuple(n for n in lazy_tables(tensors) if mode == "on" or tensors[n].nbytes > LAZY_AUTO_MIN_BYTES)


def lazy_note(tensors: TensorSet, names: tuple[str, ...], mode: str, load_mode: str) -> str:
    """The plan's reason for its lookup tables: where they are and why they are not counted as RAM."""
    size = sum(tensors[n].nbytes for n in names)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    why = "every lookup table" if mode == "on" else f"tables over {LAZY_AUTO_MIN_BYTES // GiB} GiB"
    mapped = "; mapped even with -lm none" if load_mode == "none" else ""
    return (
        f"lazy tables: {shown} ({fmt_bytes(size)}) {'stays' if len(names) == 1 else 'stay'} in the file, "
        "memory-mapped on the CPU and read a few rows "
        f"per token (-lzm {mode}: llama.cpp reads {why} on demand{mapped}): counted as disk and page cache, "
        "not as RAM"
    )
