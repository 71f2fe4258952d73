"""What llama.cpp says it did, read from its log; compared with what the plan said. Pure: text in, values out.

Lines read (llama.cpp 0c1e570):
  `load_tensors:        CUDA0 model buffer size = 7161.23 MiB`        (info)
  `llama_kv_cache:      CUDA0 KV buffer size =   38.00 MiB`           (info)
  `llama_memory_recurrent: CPU RS buffer size = 0.11 MiB`            (info: linear-attention state, planned as KV)
  `sched_reserve:       CUDA0 compute buffer size =  340.00 MiB`      (info)
  `tensor blk.3.ffn_up_exps.weight (…) buffer type overridden to CPU`  (debug, -lv 5)
A log may hold more than one load (a fit pass before the real one): the last one counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from launcher.model.tensors import TensorSet
from launcher.plan.memory import RPC_COMPUTE_SOURCE
from launcher.plan.types import CPU, DevicePlan, Plan
from launcher.units import MiB, fmt_bytes

_BUF_RE = re.compile(
    r"(load_tensors|llama_kv_cache|llama_memory_recurrent|sched_reserve):\s+(\S+)\s+(model|KV|RS|compute) buffer "
    r"size =\s+([\d.]+) MiB"
)
_OVERRIDE_RE = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")
_LOAD_START_RE = re.compile(r"load_tensors: loading model tensors")

# llama.cpp's own failure messages, by what they mean for the user.
FAILURES = (
    ("port", re.compile(r"couldn't bind|Address already in use|failed to bind", re.I)),
    ("oom", re.compile(r"out of memory|cudaMalloc failed|failed to allocate .* buffer|ErrorOutOfDeviceMemory", re.I)),
    ("model", re.compile(r"failed to load model|error loading model|gguf_init_from_file|invalid magic", re.I)),
    # ggml-rpc's client aborts without naming the worker: runq names it (workers.name_dead)
    ("rpc", re.compile(r"Remote RPC server crashed|RPC handshake failed|Failed to connect to \S+:\d+", re.I)),
)


@dataclass
class Report:
    buffers: dict[str, dict[str, float]] = field(default_factory=dict)  # device -> kind -> bytes
    overridden: dict[str, str] = field(default_factory=dict)  # tensor -> buffer, the last load pass

    def device_bytes(self, device: str) -> float:
        return sum(self.buffers.get(device, {}).values())


def _device(name: str) -> str:
    """llama.cpp's buffer names to the plan's device names: CPU_Mapped, CPU_REPACK, CUDA_Host… are host memory."""
    return CPU if name.upper().startswith("CPU") or name.endswith("_Host") or name.startswith("AMX") else name


def parse(text: str) -> Report:
    r = Report()
    for line in text.splitlines():
        if _LOAD_START_RE.search(line):
            r.buffers.clear()  # a new load pass: only the last one is what runs
            r.overridden.clear()
        if m := _OVERRIDE_RE.search(line):
            r.overridden[m.group(1)] = m.group(2)
        elif m := _BUF_RE.search(line):
            kind = {"model": "weights", "KV": "kv", "RS": "kv", "compute": "compute"}[m.group(3)]  # RS: recurrent state
            dev = r.buffers.setdefault(_device(m.group(2)), {})
            dev[kind] = dev.get(kind, 0.0) + float(m.group(4)) * MiB
    return r


def failure(text: str) -> str | None:
    """'port', 'oom', 'model', or None: what a failed llama.cpp start was about."""
    for kind, rx in FAILURES:
        if rx.search(text):
            return kind
    return None


@dataclass(frozen=True)
class Verification:
    ok: bool
    lines: tuple[str, ...]
    problems: tuple[str, ...]


AGREEMENT = 0.10  # a row within 10% agrees; a larger difference is explained in the row


class Placement(Protocol):
    """What the check reads of a plan: a Plan, or a service's saved one (service/manage.py)."""

    @property
    def devices(self) -> Sequence[DevicePlan]: ...

    @property
    def gpu_devices(self) -> Sequence[DevicePlan]: ...


def mapped_bytes(plan: Plan, tensors: TensorSet) -> int:
    """What llama.cpp reports as the CPU's model buffer when it maps the file (mmap): per file, the range from the
    start of the CPU's first tensor to the end of its last (llama_model_loader::get_mapping_range), so the tensors
    of other devices that lie in between (a worker's experts, interleaved by layer) count too."""
    spans: dict[int, tuple[int, int]] = {}
    lazy = set(plan.lazy_tables)  # mapped by a buffer of their own (weights_with_lazy adds them)
    for t in tensors.tensors:
        if plan.placement.get(t.name) != CPU or t.name in lazy:
            continue
        first, last = spans.get(t.shard, (t.offset, t.offset + t.nbytes))
        spans[t.shard] = (min(first, t.offset), max(last, t.offset + t.nbytes))
    return sum(last - first for first, last in spans.values())


@dataclass(frozen=True)
class _Row:
    device: str
    label: str
    predicted: float
    measured: float
    source: str
    reserve: bool = False  # a budget runq keeps free, not a prediction: using less of it is no error


def _rows(plan: Placement, report: Report, mapped: int | None) -> list[_Row]:
    rows = []
    for d in plan.devices:
        got = report.buffers.get(d.name, {})
        weights, source = float(d.weights_bytes), "GGUF header"
        if d.name == CPU and mapped is not None and d.weights_bytes:
            weights = float(mapped)  # like with like: llama.cpp counts the mapped file range
            source = f"GGUF header: the file range mmap maps, {fmt_bytes(d.weights_bytes)} of it the CPU's tensors"
        if d.lazy_bytes:  # llama.cpp reports the lookup tables it maps as a model buffer of the CPU's
            weights += d.lazy_bytes
            source += f"; with {fmt_bytes(d.lazy_bytes)} of lookup tables mapped on demand (not resident)"
        rows += [
            _Row(d.name, "weights", weights, got.get("weights", 0.0), source),
            _Row(d.name, "KV cache", d.kv_bytes, got.get("kv", 0.0), d.kv_source),
            _Row(d.name, "compute", d.compute_bytes, got.get("compute", 0.0), d.compute_source,
                 reserve=d.compute_source == RPC_COMPUTE_SOURCE),
        ]  # fmt: skip
    return rows


def column_lines(plan: Placement, report: Report, mapped: int | None = None) -> list[str]:
    """Predicted and reported bytes per device and column (weights, KV cache, compute), with the error in %.
    `mapped`: the CPU's mapped file range (mapped_bytes), what llama.cpp reports for its weights under mmap."""
    width = max(8, *(len(d.name) + 1 for d in plan.devices))  # worker devices have long names
    out = [f"{'device':<{width}}{'column':<10}{'predicted':>12}{'llama.cpp':>12}{'error':>9}   predicted from"]
    for r in _rows(plan, report, mapped):
        err = (r.predicted - r.measured) / r.measured * 100 if r.measured else 0.0 if not r.predicted else math.inf
        note = r.source
        if r.reserve and r.measured <= r.predicted:
            shown = "reserve"
            note += f"; llama.cpp used {fmt_bytes(r.measured)} of it"
        else:
            shown = f"{err:+.1f}%" if err != math.inf else "n/a"
            if abs(err) > AGREEMENT * 100:
                note += f"; {_why(r.predicted, r.measured)}"
        cells = f"{fmt_bytes(r.predicted):>12}{fmt_bytes(r.measured):>12}{shown:>9}"
        out.append(f"{r.device:<{width}}{r.label:<10}{cells}   {note}")
    return out


def _why(predicted: float, measured: float) -> str:
    if measured < 2 * MiB and abs(predicted - measured) < 2 * MiB:
        return "under 2 MiB apart: llama.cpp prints buffers rounded, and pads small ones"
    return "more than 10% off: please report it with this table"


def verify(
    plan: Placement,
    report: Report,
    *,
    has_gpu: bool,
    expected_overrides: dict[str, str] | None = None,
    tensors: TensorSet | None = None,
) -> Verification:
    """Compare llama.cpp's buffers (and, when the log has them, its override lines) with the plan; `tensors` (the
    model's) lets the CPU's weights of a mapped Plan be compared as llama.cpp counts them."""
    mapped = None
    if tensors is not None and isinstance(plan, Plan) and plan.load_mode == "mmap":
        mapped = mapped_bytes(plan, tensors)
    lines = column_lines(plan, report, mapped)
    problems: list[str] = []
    gpus_planned = [d for d in plan.gpu_devices if d.weights_bytes > 0]
    gpus_used = [
        name
        for name in report.buffers
        if name != CPU and not name.startswith("RPC") and report.buffers[name].get("weights", 0) > 0
    ]
    if has_gpu and gpus_planned and not gpus_used:
        problems.append(
            "the plan puts weights on the GPU but llama.cpp loaded everything on the CPU (driver not ready, "
            "or a CPU-only build): it would run many times slower than planned"
        )
    if expected_overrides is not None:
        # "=CPU" may land in one of the CPU's extra buffer types: CPU_REPACK (repacked MXFP4/Q4_0/IQ4_NL kernels).
        got = {n: CPU if b.startswith(f"{CPU}_") else b for n, b in report.overridden.items()}
        if got != expected_overrides:
            missing = sorted(set(expected_overrides) - set(got))
            extra = sorted(set(got) - set(expected_overrides))
            problems.append(
                f"llama.cpp overrode {len(got)} tensors, the plan {len(expected_overrides)}"
                + (f"; not overridden: {', '.join(missing[:3])}" if missing else "")
                + (f"; unplanned: {', '.join(extra[:3])}" if extra else "")
            )
        else:
            lines.append(f"override lines: exactly the {len(got)} planned tensors were moved")
    return Verification(ok=not problems, lines=tuple(lines), problems=tuple(problems))
