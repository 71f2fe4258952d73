"""The machine a plan is made for: GPUs, RAM, CPU, disk — probed or described.

Pure: no I/O beyond reading a description file handed in as text. A machine
can be described instead of probed (`--gpu 24GiB --ram 256GiB`, `2x80GiB`,
or a JSON file), so every plan can be made and tested without the hardware.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from launcher.errors import UsageError, format_validation_error
from launcher.machine.speed import SpeedModel
from launcher.units import parse_size


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None = None
    mem_bus_width_bits: int | None = None
    mem_clock_mhz: int | None = None
    bandwidth_bytes_s: float | None = None  # given, or derived from bus width and clock

    @property
    def sm(self) -> str | None:
        """'86' for compute capability 8.6 (CMAKE_CUDA_ARCHITECTURES form)."""
        cc = self.compute_capability
        return f"{cc[0]}{cc[1]}" if cc else None

    @property
    def memory_bandwidth(self) -> float | None:
        """Peak bytes/s: given, or 2 transfers per clock × bus width (DDR/HBM)."""
        if self.bandwidth_bytes_s:
            return self.bandwidth_bytes_s
        if self.mem_bus_width_bits and self.mem_clock_mhz:
            return 2 * self.mem_clock_mhz * 1e6 * self.mem_bus_width_bits / 8
        return None


@dataclass(frozen=True)
class CPU:
    model: str | None = None
    physical_cores: int | None = None
    logical_cores: int | None = None
    flags: frozenset[str] = frozenset()

    @property
    def simd(self) -> list[str]:
        """The SIMD extensions that matter to llama.cpp's CPU kernels, present on this CPU."""
        wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni",
                  "amx_int8", "amx_bf16", "neon", "sve", "asimd")  # fmt: skip
        return [f for f in wanted if f in self.flags]


@dataclass(frozen=True)
class RemoteDevice:
    """One device a `runq worker` (llama.cpp's ggml-rpc-server) exposes: a GPU, or its CPU and RAM."""

    index: int  # its index on the worker: the N of llama.cpp's buffer name RPC<N>[host:port]
    kind: Literal["gpu", "cpu"]
    total_bytes: int
    free_bytes: int
    bandwidth_bytes_s: float | None = None  # None: the memory model's default for its kind


@dataclass(frozen=True)
class Worker:
    """Another host lending its devices over llama.cpp's RPC backend (`--rpc host:port`)."""

    endpoint: str  # host:port, as llama.cpp's --rpc takes it
    devices: tuple[RemoteDevice, ...]
    net_bytes_s: float | None = None  # the link to it; None: the memory model's default
    described: bool = False  # from --worker (a host you may not have yet), not asked over the network
    note: str | None = None  # what was assumed about it

    @property
    def host(self) -> str:
        return self.endpoint.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Machine:
    gpus: tuple[GPU, ...] = ()
    ram_total_bytes: int = 0
    ram_available_bytes: int = 0
    swap_total_bytes: int = 0
    swap_free_bytes: int = 0
    cpu: CPU = field(default_factory=CPU)
    disk_path: str | None = None
    disk_free_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    gpu_note: str | None = None  # why there are no GPUs, when there are none
    source: Literal["probed", "described", "mixed"] = "probed"
    ram_bandwidth_bytes_s: float | None = None  # described only; the planner has a default
    speed: SpeedModel | None = None  # this machine's measured decode constants (`runq calibrate`), if any
    notes: tuple[str, ...] = ()  # what a plan for this machine must say (e.g. parts taken from this box)
    workers: tuple[Worker, ...] = ()  # other hosts over RPC, in --rpc order (llama.cpp numbers their devices so)

    @property
    def cores(self) -> int:
        return self.cpu.physical_cores or self.cpu.logical_cores or 1


# --- describing a machine ----------------------------------------------------------------------

_GPU_FLAG_RE = re.compile(r"^\s*(?:(\d+)\s*[x×]\s*)?(.+?)\s*$", re.IGNORECASE)


def parse_gpu_flag(text: str) -> list[int]:
    """'24GiB' -> [24 GiB]; '2x80GiB' -> [80 GiB, 80 GiB]; 'none' -> []."""
    if text.strip().lower() in ("none", "0", "no"):
        return []
    m = _GPU_FLAG_RE.match(text)
    if not m:  # pragma: no cover - the pattern matches any non-empty text
        raise UsageError(f"cannot read --gpu {text!r}", hint="e.g. --gpu 24GiB or --gpu 2x80GiB")
    count = int(m.group(1)) if m.group(1) else 1
    if not 1 <= count <= 64:
        raise UsageError(f"--gpu {text!r}: {count} GPUs is not a number runq can plan for (1-64)",
                         hint="e.g. --gpu 2x80GiB, or --gpu none for no GPU")  # fmt: skip
    size = parse_size(m.group(2), what="GPU memory")
    if size <= 0:
        raise UsageError(f"--gpu {text!r}: GPU memory must be more than zero")
    return [size] * count


_NET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([gm])(?:bit|b)(?:/s)?\s*$", re.IGNORECASE)
RPC_DEFAULT_PORT = 50052


def parse_net(text: str) -> float:
    """'10Gbit' -> 1.25e9 bytes/s; '2.5Gbit', '100Mbit' (link speeds are decimal bits per second)."""
    m = _NET_RE.match(text)
    if not m:
        raise UsageError(f"cannot read the network speed {text!r}", hint="e.g. net=10Gbit, net=2.5Gbit, net=1Gbit")
    bits = float(m.group(1)) * (1e9 if m.group(2).lower() == "g" else 1e6)
    if bits <= 0:
        raise UsageError(f"network speed {text!r} must be more than zero")
    return bits / 8


def parse_endpoint(text: str) -> str:
    """'10.0.0.2:50052' (or '10.0.0.2', the default port) -> 'host:port', checked."""
    host, _, port = text.strip().rpartition(":")
    if not host:
        host, port = text.strip(), str(RPC_DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in ",= "):
        raise UsageError(f"cannot read the worker address {text!r}", hint="write host:port, e.g. 10.0.0.2:50052")
    return f"{host}:{int(port)}"


def parse_worker_flag(text: str, number: int) -> Worker:
    """`--worker ram=256GiB[,gpu=24GiB][,net=10Gbit][,at=host:port]`: a host runq worker would serve.
    Its devices are listed as `runq worker` exposes them: the GPUs first, then the CPU with its RAM."""
    fields: dict[str, str] = {}
    gpus: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("ram", "gpu", "net", "at"):
            raise UsageError(
                f"--worker {text!r}: cannot read {part!r}",
                hint="e.g. --worker ram=256GiB,gpu=24GiB,net=10Gbit (at=host:port for its address)",
            )
        if key == "gpu":
            gpus += parse_gpu_flag(value)
        else:
            fields[key] = value.strip()
    if "ram" not in fields and not gpus:
        raise UsageError(f"--worker {text!r}: say what it lends", hint="e.g. --worker ram=256GiB")
    ram = parse_size(fields["ram"], what="worker RAM") if "ram" in fields else 0
    devices = [RemoteDevice(i, "gpu", size, size) for i, size in enumerate(gpus)]
    if ram:
        devices.append(RemoteDevice(len(devices), "cpu", ram, ram))
    endpoint = parse_endpoint(fields["at"]) if "at" in fields else f"worker{number}:{RPC_DEFAULT_PORT}"
    net = parse_net(fields["net"]) if "net" in fields else None
    return Worker(endpoint, tuple(devices), net, described=True)


def _size_field(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size like '24GiB' or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative")
        return value
    if isinstance(value, str):
        try:
            return parse_size(value, what=what)
        except UsageError as e:
            raise ValueError(e.message) from None
    raise ValueError(f"{what} must be a size like '24GiB' or a number of bytes")


class GPUSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "GPU (described)"
    memory: int = Field(description="total VRAM: '24GiB' or bytes")
    free: int | None = None
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    bandwidth: int | None = Field(default=None, description="memory bandwidth, bytes/s or '1008GB' (per second)")

    @field_validator("memory", "free", "bandwidth", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> Any:
        return None if v is None else _size_field(v, "size")


class MachineSpec(BaseModel):
    """A described machine, as written in a --machine JSON file."""

    model_config = ConfigDict(extra="forbid")
    gpus: list[GPUSpec] = []
    ram: int
    ram_available: int | None = None
    swap: int = 0
    cores: int | None = Field(default=None, ge=1, le=4096)
    cpu_model: str | None = None
    cpu_flags: list[str] = []
    ram_bandwidth: int | None = None
    disk_free: int | None = None

    @field_validator("ram", "ram_available", "swap", "ram_bandwidth", "disk_free", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> Any:
        return None if v is None else _size_field(v, "size")

    def to_machine(self) -> Machine:
        gpus = tuple(
            GPU(
                index=i,
                name=g.name,
                total_bytes=g.memory,
                free_bytes=g.memory if g.free is None else g.free,
                compute_capability=_cc(g.compute_capability),
                bandwidth_bytes_s=float(g.bandwidth) if g.bandwidth else None,
            )
            for i, g in enumerate(self.gpus)
        )
        return Machine(
            gpus=gpus,
            ram_total_bytes=self.ram,
            ram_available_bytes=self.ram if self.ram_available is None else self.ram_available,
            swap_total_bytes=self.swap,
            swap_free_bytes=self.swap,
            cpu=CPU(
                model=self.cpu_model,
                physical_cores=self.cores,
                logical_cores=self.cores,
                flags=frozenset(self.cpu_flags),
            ),
            disk_free_bytes=self.disk_free,
            gpu_note=None if gpus else "described without GPUs",
            source="described",
            ram_bandwidth_bytes_s=float(self.ram_bandwidth) if self.ram_bandwidth else None,
        )


def _cc(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    major, minor = text.split(".")
    return int(major), int(minor)


def machine_from_json(text: str, source: str = "machine file") -> Machine:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{source}: not valid JSON: {e.msg} (line {e.lineno})") from None
    try:
        return MachineSpec.model_validate(data).to_machine()
    except ValidationError as e:
        raise UsageError(f"{source}: {format_validation_error(e)}", hint=MACHINE_HINT) from None


MACHINE_HINT = 'e.g. {"gpus": [{"memory": "24GiB", "compute_capability": "8.6"}], "ram": "256GiB", "cores": 16}'


def override(
    base: Machine,
    *,
    gpus: list[int] | None = None,
    ram: int | None = None,
    cores: int | None = None,
) -> Machine:
    """Replace parts of a (probed or described) machine with what the user described."""
    if gpus is None and ram is None and cores is None:
        return base
    changes: dict[str, Any] = {"source": "described" if base.source == "described" else "mixed"}
    if gpus is not None:
        changes["gpus"] = tuple(
            GPU(index=i, name="GPU (described)", total_bytes=size, free_bytes=size) for i, size in enumerate(gpus)
        )
        changes["gpu_note"] = None if gpus else "described without GPUs"
    if ram is not None:
        changes["ram_total_bytes"] = ram
        changes["ram_available_bytes"] = ram
        changes["swap_total_bytes"] = changes["swap_free_bytes"] = 0
    if cores is not None:
        if not 1 <= cores <= MAX_CORES:
            raise UsageError(
                f"--cores {cores}: must be between 1 and {MAX_CORES}", hint="physical cores, e.g. --cores 16"
            )
        changes["cpu"] = replace(base.cpu, physical_cores=cores, logical_cores=cores)
    elif base.source == "probed":
        changes["notes"] = (
            *base.notes,
            f"the described machine has this machine's {base.cores} CPU cores (threads and CPU speed): "
            "add --cores N to describe its own",
        )
    return replace(base, **changes)


def limit_gpus(base: Machine, limit: int) -> Machine:
    """Each GPU as if it had at most `limit` bytes (free memory capped the same): what `runq tune --gpu-limit`
    plans and measures with, to leave VRAM to something else or to tune as on a smaller card."""
    gpus = tuple(replace(g, total_bytes=min(g.total_bytes, limit), free_bytes=min(g.free_bytes, limit))
                 for g in base.gpus)  # fmt: skip
    return replace(base, gpus=gpus)


MAX_CORES = 4096
