"""Probe this machine: NVIDIA GPUs (NVML), RAM and swap (psutil), CPU (py-cpuinfo), free disk.

The edge of the system: everything here reads the host. It never raises for
missing hardware or drivers — a Machine with no GPUs and the reason comes
back instead — and it never changes the environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from launcher.machine.spec import CPU, GPU, Machine

T = TypeVar("T")


def probe(*, disk_path: str | Path | None = None, cpu_details: bool = True) -> Machine:
    """The machine as it is now. `cpu_details` adds the CPU model and flags (py-cpuinfo, about 1 s)."""
    import psutil

    gpus, driver, cuda, note = probe_gpus()
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    disk_free = None
    path = str(disk_path) if disk_path is not None else None
    if path is not None:
        disk_free = free_disk_bytes(path)
    return Machine(
        gpus=gpus,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        swap_total_bytes=int(sw.total),
        swap_free_bytes=int(sw.free),
        cpu=probe_cpu(details=cpu_details),
        disk_path=path,
        disk_free_bytes=disk_free,
        driver_version=driver,
        cuda_version=cuda,
        gpu_note=note,
        source="probed",
    )


def free_disk_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def probe_cpu(*, details: bool = True) -> CPU:
    import psutil

    physical = psutil.cpu_count(logical=False)
    logical = psutil.cpu_count(logical=True) or os.cpu_count()
    model: str | None = None
    flags: frozenset[str] = frozenset()
    if details:
        try:
            import cpuinfo

            info = cpuinfo.get_cpu_info()
            model = info.get("brand_raw") or None
            flags = frozenset(info.get("flags", ()))
        except Exception:  # py-cpuinfo fails on some exotic CPUs; the plan does not need it
            pass
    return CPU(model=model, physical_cores=physical, logical_cores=logical, flags=flags)


def probe_gpus() -> tuple[tuple[GPU, ...], str | None, str | None, str | None]:
    """(gpus, driver version, CUDA version, note explaining an empty list)."""
    try:
        import pynvml
    except ImportError:
        return (), None, None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return (), None, None, _nvml_reason(e)
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = None
        try:
            v = pynvml.nvmlSystemGetCudaDriverVersion()
            cuda = f"{v // 1000}.{v % 1000 // 10}"
        except pynvml.NVMLError:
            pass
        gpus = [_read_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
        note = None if gpus else "the NVIDIA driver reports no GPUs"
        return tuple(gpus), driver, cuda, note
    except pynvml.NVMLError as e:
        return (), None, None, f"NVML error while reading GPUs: {e}"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _read_gpu(pynvml: Any, i: int) -> GPU:
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    cc = _optional(lambda: pynvml.nvmlDeviceGetCudaComputeCapability(h))
    bus = _optional(lambda: pynvml.nvmlDeviceGetMemoryBusWidth(h))
    clock = _optional(lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM))
    return GPU(
        index=i,
        name=_text(pynvml.nvmlDeviceGetName(h)),
        total_bytes=int(mem.total),
        free_bytes=int(mem.free),
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
        mem_bus_width_bits=int(bus) if bus else None,
        mem_clock_mhz=int(clock) if clock else None,
    )


def _nvml_reason(e: Exception) -> str:
    text = str(e)
    if "LibraryNotFound" in type(e).__name__ or "Library Not Found" in text:
        return "no NVIDIA driver (libnvidia-ml.so not found)"
    if "DriverNotLoaded" in type(e).__name__ or "Driver Not Loaded" in text:
        return "the NVIDIA driver is installed but not loaded"
    return f"NVML could not start: {text}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read: Callable[[], T]) -> T | None:
    """NVML calls that some GPUs or drivers do not support: None instead of an error."""
    try:
        return read()
    except Exception:
        return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, fast: /proc/cpuinfo on Linux, py-cpuinfo (about 1 s) elsewhere."""
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return probe_cpu(details=True).flags
