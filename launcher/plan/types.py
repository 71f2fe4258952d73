"""The planning request and the Plan: the values the planner takes and gives.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from launcher.plan.overrides import Override
from launcher.plan.projection import ESTIMATE, Projection

DEFAULT_UBATCH = 512
SMALL_UBATCH = 256  # weighed when VRAM is short: a smaller compute buffer against layers moved to the CPU
LARGE_UBATCH = 2048  # 3.4x faster prompt processing with experts on CPU (llama-cpp.md, H200)
CPU = "CPU"
FlashAttn = Literal["auto", "on", "off"]
LoadMode = Literal["mmap", "none"]
LazyMode = Literal["auto", "on", "off"]  # llama.cpp's --lazy-mode (-lzm): which lookup tables it reads on demand


@dataclass(frozen=True)
class Request:
    ctx: int
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    ubatch: int | None = None  # None: the planner chooses
    ngl: int | None = None  # pinned -ngl
    user_overrides: tuple[Override, ...] = ()  # pinned -ot, applied before runq's
    server: bool = True  # llama-server keeps a host prompt cache; llama-cli does not
    threads: int | None = None
    margin_extra_bytes: int = 0  # extra safety per GPU (the retry after an out-of-memory error, tune's deltas)
    projections: tuple[Projection, ...] = ()  # llama.cpp's own sizes (llama/fit.py), used where they apply
    # Knobs a measurement chose (`runq tune`), or None/False: the planner's own choice.
    flash_attn: FlashAttn = "auto"  # -fa: llama.cpp decides unless measured otherwise
    load_mode: LoadMode | None = None  # -lm: mmap or none; None: none when tensors are overridden to the CPU
    llama_default: bool = False  # llama.cpp's own fit places everything (it measured fastest here)
    tuned: str | None = None  # what was measured, said in the plan's reasons ("tuned 2026-12-01: …")
    # The server that will really run (plan/serving.py): its slots (-np; more than one share a unified KV cache)
    # and which lookup tables llama.cpp reads on demand (-lzm; None: runq's rule).
    slots: int = 1
    lazy_mode: LazyMode | None = None
    spec_type: str = "none"  # --spec-type: "draft-mtp" (NextN layers loaded, their KV and a second compute buffer)
    moe_cache_mib: int = 0  # --moe-cache-mib (newer llama.cpp than the pin): a GPU cache of hot experts
    # Per device, the margin that replaces runq's default (CUDA context + llama.cpp's -fitt): what llama.cpp itself
    # keeps there (measured with a build), less what its fit placed beyond runq's estimate (pipeline/fit_check.py).
    gpu_margins: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DevicePlan:
    name: str  # "CUDA0", "CPU"
    capacity_bytes: int  # free VRAM, or available RAM
    margin_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    extra_bytes: int = 0  # llama-server's host prompt cache
    remote: bool = False  # a device on a worker (llama.cpp's RPC backend)
    kv_source: str = ESTIMATE  # "runq estimate" or "llama.cpp projection, build …"
    compute_source: str = ESTIMATE
    # Lookup tables llama.cpp reads a few rows per token from the memory-mapped file (the CPU's): on disk and in
    # the page cache, not resident RAM, so not in used_bytes.
    lazy_bytes: int = 0

    @property
    def budget_bytes(self) -> int:
        return self.capacity_bytes - self.margin_bytes

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.extra_bytes

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes

    @property
    def fits(self) -> bool:
        return self.used_bytes <= self.budget_bytes


@dataclass(frozen=True)
class Plan:
    fits: bool
    ctx: int
    cache_type_k: str
    cache_type_v: str
    ubatch: int
    threads: int
    ngl: int
    load_mode: LoadMode
    devices: tuple[DevicePlan, ...]
    placement: dict[str, str]  # tensor name -> device name
    moved: dict[str, str]  # tensors -ot takes off their layer's device (yours and runq's): what llama.cpp logs
    overrides: tuple[Override, ...]  # the user's first, then runq's
    tensor_split: tuple[int, ...] | None
    expert_layers: dict[str, tuple[int, ...]]  # device -> layers whose experts are all there
    partials: tuple[tuple[int, str, tuple[str, ...]], ...]  # (layer, device, expert kinds on it), one per GPU at most
    predicted_tg_tps: float
    cache_ram_bytes: int | None  # llama-server --cache-ram, None for llama-cli
    reasons: tuple[str, ...]
    problems: tuple[str, ...] = ()
    n_layer: int = 0
    rpc: tuple[str, ...] = ()  # workers' host:port for llama.cpp's --rpc, in the order their devices are numbered
    gpu_layers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # local GPU -> its layer slots (-ts)
    speed_source: str = "reference constants"  # or "calibrated on this machine, DATE" (machine/speed.py)
    flash_attn: FlashAttn = "auto"
    llama_default: bool = False  # the command leaves placement, batch and threads to llama.cpp's own fit
    # The serving llama-server (plan/serving.py): slots (-np, unified KV cache when more than one) and the lookup
    # tables read on demand with the -lzm mode that makes llama.cpp do so (None: the model has none).
    slots: int = 1
    lazy_mode: LazyMode | None = None
    lazy_tables: tuple[str, ...] = ()
    spec_type: str = "none"
    moe_cache_mib: int = 0
    # Whose placement this is and why (pipeline/fit_check.py compares it with llama.cpp's fit): "runq",
    # "llama.cpp fit" (runq's grown to what llama.cpp's fit keeps on the GPUs), "tuned", "yours", "llama.cpp".
    placed_by: str = "runq"
    placed_why: str = ""
    # (device, llama.cpp fit's expert bytes there, runq's before the comparison, runq's now) when it was made
    fit_experts: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def gpu_devices(self) -> tuple[DevicePlan, ...]:
        """This host's GPUs."""
        return tuple(d for d in self.devices if d.name != CPU and not d.remote)

    @property
    def remote_devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.remote)

    @property
    def cpu(self) -> DevicePlan:
        return next(d for d in self.devices if d.name == CPU)

    @property
    def cpu_tensors(self) -> list[str]:
        return [n for n, d in self.placement.items() if d == CPU]

    @property
    def gpu_bytes(self) -> int:
        return sum(d.used_bytes for d in self.gpu_devices)

    @property
    def cpu_bytes(self) -> int:
        return self.cpu.used_bytes

    @property
    def kv_unified(self) -> bool:
        """Several slots share one KV cache (-kvu): each may use the whole context, as llama-server's auto does."""
        return self.slots > 1
