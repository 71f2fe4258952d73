"""What the placement phases share: the devices a plan can use (this host's GPUs, workers' devices) and the work state.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from launcher.machine.spec import Machine
from launcher.model.hparams import HParams
from launcher.model.tensors import INPUT_SIDE_ROLES, ModelTensor, TensorSet
from launcher.plan import memory as mem
from launcher.plan import overrides as ovr
from launcher.plan import serving
from launcher.plan.projection import SizeBook
from launcher.plan.types import CPU, DevicePlan, LazyMode, Request


@dataclass
class Dev:
    """A device the planner hands bytes to: a local GPU, or a device on a worker (llama.cpp's RPC backend)."""

    name: str  # the buffer name -ot takes and llama.cpp logs: CUDA0, RPC0[10.0.0.2:50052]
    index: int
    capacity: int
    margin: int
    bandwidth: float  # effective bytes/s reading weights
    remote: bool = False
    kind: str = "gpu"  # "gpu" or "cpu" (a worker's CPU and RAM)
    net_s: float = 0.0  # network seconds per token for each layer with tensors here
    layers: list[int] = field(default_factory=list)  # layer slots owned (n_layer = the output layer)


def gpu_usable(machine: Machine, extra_margin: int = 0, margins: Mapping[str, int] | None = None) -> list[Dev]:
    """This host's GPUs. Margin: the CUDA context (not in NVML's free before launch) plus what llama.cpp's fit
    keeps (-fitt), or what `margins` says llama.cpp keeps on that device (measured with a build), plus extra."""
    out = []
    for g in machine.gpus:
        name = f"CUDA{g.index}"
        base = (margins or {}).get(name, mem.CUDA_CONTEXT_BYTES + mem.GPU_MARGIN_BYTES)
        out.append(
            Dev(
                name=name,
                index=g.index,
                capacity=g.free_bytes,
                margin=base + extra_margin,
                bandwidth=mem.gpu_bandwidth(g.name, g.memory_bandwidth) * mem.GPU_BANDWIDTH_EFFICIENCY,
            )
        )
    return [g for g in out if g.capacity > g.margin]


def remote_usable(
    machine: Machine, n_embd: int, cpu_bw: float, extra_margin: int = 0, margins: Mapping[str, int] | None = None
) -> list[Dev]:
    """The workers' devices in llama.cpp's order (--rpc order, then each worker's own), each with the network
    cost of a layer placed there. A worker's RAM reads as fast as this host's unless described. An asked worker's
    GPU reported its free memory through llama.cpp, after its CUDA context: only llama.cpp's -fitt is kept there;
    a described one may not exist yet, so its context is counted as for a local GPU."""
    out = []
    for w in machine.workers:
        loop = w.host in ("localhost", "::1") or w.host.startswith("127.")
        net = w.net_bytes_s or (mem.LOOPBACK_NET_BYTES_S if loop else mem.DEFAULT_NET_BYTES_S)
        net_s = mem.rpc_layer_seconds(n_embd, net, mem.LOOPBACK_LATENCY_S if loop else mem.NET_LATENCY_S)
        for d in w.devices:
            name = f"RPC{d.index}[{w.endpoint}]"
            if d.kind == "gpu":
                context = mem.CUDA_CONTEXT_BYTES if w.described else 0
                margin = (margins or {}).get(name, context + mem.GPU_MARGIN_BYTES) + extra_margin
                bw = mem.gpu_bandwidth("", d.bandwidth_bytes_s) * mem.GPU_BANDWIDTH_EFFICIENCY
            else:
                margin = mem.ram_margin(d.total_bytes) + extra_margin
                bw = d.bandwidth_bytes_s or cpu_bw
            dev = Dev(name, d.index, d.free_bytes, margin, bw, True, d.kind, net_s)
            # A GPU's compute buffer is planned with its layers; a device lending only its memory keeps the RPC one.
            if dev.capacity > dev.margin + (0 if d.kind == "gpu" else mem.RPC_COMPUTE_BYTES):
                out.append(dev)
    return out


def layer_bytes(tensors: TensorSet, n_layer: int) -> tuple[dict[int, int], dict[int, list[ModelTensor]]]:
    """Non-expert bytes per layer slot (slot n_layer = output layer), and experts per layer."""
    non_expert: dict[int, int] = dict.fromkeys(range(n_layer + 1), 0)
    experts: dict[int, list[ModelTensor]] = {}
    for t in tensors.tensors:
        if t.role in INPUT_SIDE_ROLES:
            continue  # llama.cpp keeps the input layer on the CPU
        slot = t.layer if t.layer is not None else n_layer
        if t.is_expert and t.layer is not None:
            experts.setdefault(t.layer, []).append(t)
        else:
            non_expert[min(slot, n_layer)] = non_expert.get(min(slot, n_layer), 0) + t.nbytes
    return non_expert, experts


@dataclass
class Work:
    """What the placement phases share: the inputs, and the placement as it is built."""

    machine: Machine
    tensors: TensorSet
    hp: HParams
    req: Request
    ubatch: int
    book: SizeBook  # KV cache and compute bytes: llama.cpp's projection where it applies, else memory.py
    forced: dict[str, str]
    gpus: list[Dev]
    remotes: list[Dev]
    layer_dev: dict[int, str] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)
    expert_layers: dict[str, list[int]] = field(default_factory=dict)
    partials: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def n_layer(self) -> int:
        return self.hp.n_layer

    @property
    def threads(self) -> int:
        return self.req.threads or self.machine.cores

    @property
    def layer_devs(self) -> list[Dev]:
        """Where the layers (attention, shared weights, KV) go: this host's GPUs; with none, the workers' GPUs
        (a layer split crosses the network once per device boundary, not per layer); else the CPU."""
        return self.gpus or [d for d in self.remotes if d.kind == "gpu"]

    def placed_bytes(self, device: str) -> int:
        return sum(self.tensors[n].nbytes for n, d in self.placement.items() if d == device)

    def gpu_state(self, g: Dev) -> DevicePlan:
        n_layer = self.n_layer
        compute, source = self.book.gpu_compute(
            g.name, has_output=n_layer in g.layers, offload_copy_bytes=self.offload_copy_bytes()
        )
        return DevicePlan(
            name=g.name,
            capacity_bytes=g.capacity,
            margin_bytes=g.margin,
            weights_bytes=self.placed_bytes(g.name),
            kv_bytes=self.book.kv_bytes([il for il in g.layers if il < n_layer]),
            compute_bytes=compute,
            remote=g.remote,
            kv_source=self.book.kv_source,
            compute_source=source,
        )

    def offload_copy_bytes(self) -> int:
        """The largest expert tensor left on the CPU: a GPU multiplies prompt batches with it, so llama.cpp copies
        it into the GPU's compute buffer (memory.py, compute buffers). Before placement: the largest expert."""
        if self.placement:
            return max((t.nbytes for n, d in self.placement.items() if d == CPU and (t := self.tensors[n]).is_expert),
                       default=0)  # fmt: skip
        return self.tensors.largest_expert_bytes

    def remote_state(self, d: Dev) -> DevicePlan:
        weights = self.placed_bytes(d.name)
        if not weights:
            return DevicePlan(d.name, d.capacity, d.margin, 0, 0, 0, remote=True)
        return DevicePlan(d.name, d.capacity, d.margin, weights, 0, mem.RPC_COMPUTE_BYTES, remote=True,
                          compute_source=mem.RPC_COMPUTE_SOURCE)  # fmt: skip

    @property
    def lazy_mode(self) -> LazyMode | None:
        """The -lzm the plan passes: llama.cpp's auto unless pinned or chosen; None for a model without tables."""
        if not serving.lazy_tables(self.tensors):
            return None
        return self.req.lazy_mode or "auto"

    @cached_property
    def lazy(self) -> tuple[str, ...]:
        """The lookup tables llama.cpp reads on demand (memory-mapped on the CPU, not resident): serving.py."""
        return serving.read_on_demand(self.tensors, self.lazy_mode) if self.lazy_mode else ()

    def lazy_bytes(self) -> int:
        return sum(self.tensors[n].nbytes for n in self.lazy)

    def movable(self, il: int, experts: dict[int, list[ModelTensor]]) -> list[ModelTensor]:
        return [t for t in experts.get(il, []) if t.name not in self.forced]


def forced_by_user(tensors: TensorSet, req: Request) -> dict[str, str]:
    """Tensors the user pinned with their own -ot stay where they said (the first pattern that matches)."""
    forced: dict[str, str] = {}
    for t in tensors.tensors:
        for o in req.user_overrides:
            if ovr.selects([o.pattern], t.name):
                forced[t.name] = o.buffer
                break
    return forced


def same_host(a: str, b: str) -> bool:
    """Two buffers on one worker (RPC0[h:p], RPC1[h:p]) copy between themselves there, not through this host."""
    return a == b or (a.endswith("]") and a[a.find("[") :] == b[b.find("[") :])


def expert_kind(name: str) -> str:
    return name.split(".")[2] if name.startswith("blk.") else name


def best_subset(candidates: list[ModelTensor], free: int) -> list[ModelTensor]:
    """The subset of one layer's expert kinds with the most bytes that fits in `free` (3-4 kinds). A kind's
    tensors move together (gpt-oss: ffn_up_exps.weight with ffn_up_exps.bias), so one -ot pattern covers them."""
    kinds: dict[str, list[ModelTensor]] = {}
    for t in candidates:
        kinds.setdefault(expert_kind(t.name), []).append(t)
    groups = list(kinds.values())
    best: list[ModelTensor] = []
    best_bytes = 0
    n = len(groups)
    for mask in range(1, 1 << n):
        chosen = [t for i in range(n) if mask >> i & 1 for t in groups[i]]
        size = sum(t.nbytes for t in chosen)
        if best_bytes < size <= free:
            best, best_bytes = chosen, size
    return best
