"""Decode speed constants measured on this machine, and how they are fitted from measurements.

Pure: no I/O. `runq calibrate` (launcher/calibration.py) and `runq tune` measure llama-bench decode
on models of known bytes per token; this module turns those measurements into a SpeedModel
(effective CPU bandwidth and per-layer cost for each thread count measured, effective GPU bandwidth)
by least squares over

    seconds per token = bytes read from RAM / cpu_bandwidth(threads)
                      + sum over GPUs of bytes read there / gpu_bandwidth
                      + layers x per-layer cost

weighted by relative error, so a small fast model counts as much as a big slow one. Without a
SpeedModel the planner uses the reference constants in launcher/memory.py (one H200 + 16-core Xeon).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

REFERENCE = "reference constants"
# A model reading less than this per token decodes from the CPU's caches, not from RAM: its speed says nothing
# about the memory bandwidth, so it is not fitted (the calibration models read about 50 MB per token).
MIN_FIT_BYTES_PER_TOKEN = 16 * 2**20


@dataclass(frozen=True)
class Observation:
    """One measured decode: what each device read per token, the layers, the threads, and the speed."""

    threads: int
    n_layer: int
    cpu_bytes: int  # weight bytes read from RAM per token
    tg_tps: float
    gpu_bytes: tuple[tuple[str, int], ...] = ()  # (device, bytes per token), e.g. ("CUDA0", 1_200_000_000)
    source: str = "calibrate"  # "calibrate" or "tune:<model>"

    @property
    def seconds(self) -> float:
        return 1.0 / self.tg_tps

    @property
    def usable(self) -> bool:
        return self.tg_tps > 0 and self.cpu_bytes + sum(n for _, n in self.gpu_bytes) >= MIN_FIT_BYTES_PER_TOKEN


@dataclass(frozen=True)
class CpuPoint:
    threads: int
    bandwidth: float  # effective bytes/s as llama.cpp's decode reads weights from RAM
    layer_s: float  # fixed cost per layer per token (threads synchronising, small ops)


@dataclass(frozen=True)
class SpeedModel:
    """Per-machine decode constants, and where they came from (shown next to every prediction)."""

    cpu: tuple[CpuPoint, ...]  # sorted by threads
    gpu_bandwidth: tuple[tuple[str, float], ...] = ()  # effective bytes/s per device (already x efficiency)
    gpu_layer_s: float | None = None
    h2d_bytes_s: tuple[tuple[str, float], ...] = ()  # host-to-device copy speed per GPU (measured, shown)
    calibrated_at: str = ""  # ISO date
    refitted_from: tuple[str, ...] = field(default=())  # models whose tune runs refined the constants

    @property
    def label(self) -> str:
        text = f"calibrated on this machine, {self.calibrated_at[:10]}"
        if self.refitted_from:
            text += f", refitted from tune runs of {len(self.refitted_from)} model(s)"
        return text

    def cpu_at(self, threads: int) -> CpuPoint:
        """The constants for a thread count: measured, interpolated between measured counts, or the nearest
        (more threads than measured is treated as the most measured: hyperthreads add little bandwidth)."""
        pts = self.cpu
        if threads <= pts[0].threads:
            first = pts[0]
            # Below the fewest threads measured: bandwidth in proportion to threads.
            return CpuPoint(threads, first.bandwidth * threads / first.threads, first.layer_s)
        for lo, hi in itertools.pairwise(pts):
            if lo.threads <= threads <= hi.threads:
                f = (threads - lo.threads) / (hi.threads - lo.threads)
                return CpuPoint(
                    threads,
                    lo.bandwidth + f * (hi.bandwidth - lo.bandwidth),
                    lo.layer_s + f * (hi.layer_s - lo.layer_s),
                )
        return pts[-1]

    def seconds_per_token(self, n_layer: int, per_device: Mapping[str, int], threads: int) -> float:
        """Decode time per token for the bytes each device reads ("CPU" or a GPU name)."""
        cpu = self.cpu_at(threads)
        gpu_bw = dict(self.gpu_bandwidth)
        on_gpu = any(dev != "CPU" and n for dev, n in per_device.items())
        layer_s = self.gpu_layer_s if (on_gpu and self.gpu_layer_s is not None) else cpu.layer_s
        seconds = n_layer * layer_s
        for dev, n in per_device.items():
            if dev == "CPU":
                seconds += n / cpu.bandwidth
            else:
                seconds += n / gpu_bw.get(dev, min(gpu_bw.values(), default=0.9e12))
        return seconds


def _solve2(rows: Sequence[tuple[float, float, float]]) -> tuple[float, float] | None:
    """Least squares a, c >= 0 for y ~ a x + c z over rows (x, z, y), weighted by 1/y (relative error)."""
    sxx = sxz = szz = sxy = szy = 0.0
    for x, z, y in rows:
        w = 1.0 / (y * y)
        sxx += w * x * x
        sxz += w * x * z
        szz += w * z * z
        sxy += w * x * y
        szy += w * z * y
    det = sxx * szz - sxz * sxz
    if det > 1e-12 * max(sxx * szz, 1e-300):
        a = (sxy * szz - szy * sxz) / det
        c = (sxx * szy - sxz * sxy) / det
        if a > 0 and c >= 0:
            return a, c
    # Degenerate (one point, or every model the same shape) or a negative per-layer cost: bandwidth only.
    if sxx <= 0:
        return None
    a = sxy / sxx
    return (a, 0.0) if a > 0 else None


def fit_cpu(observations: Iterable[Observation]) -> tuple[CpuPoint, ...]:
    """One CpuPoint per thread count from CPU-only decodes (those with no GPU bytes)."""
    by_threads: dict[int, list[tuple[float, float, float]]] = {}
    for o in observations:
        if o.gpu_bytes or not o.usable:
            continue
        by_threads.setdefault(o.threads, []).append((float(o.cpu_bytes), float(o.n_layer), o.seconds))
    out = []
    for threads, rows in sorted(by_threads.items()):
        solved = _solve2(rows)
        if solved is not None:
            inv_bw, layer_s = solved
            out.append(CpuPoint(threads, 1.0 / inv_bw, layer_s))
    return tuple(out)


def fit_gpu(
    observations: Iterable[Observation], cpu: SpeedModel, fallback_layer_s: float
) -> tuple[tuple[tuple[str, float], ...], float | None]:
    """Effective bandwidth per GPU (and one per-layer cost) from decodes that read from GPUs: what the CPU
    part does not explain, over the GPU bytes. Empty when nothing was measured on a GPU."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for o in observations:
        if not o.gpu_bytes or not o.usable:
            continue
        cpu_s = o.cpu_bytes / cpu.cpu_at(o.threads).bandwidth if o.cpu_bytes else 0.0
        rest = o.seconds - cpu_s
        if rest <= 0:
            continue
        # One GPU dominates each row (the one reading the most); rows are split per device.
        dev, _n = max(o.gpu_bytes, key=lambda kv: kv[1])
        total_gpu = sum(b for _, b in o.gpu_bytes)
        rows.setdefault(dev, []).append((float(total_gpu), float(o.n_layer), rest))
    bws = []
    layer_costs = []
    for dev, r in sorted(rows.items()):
        solved = _solve2(r)
        if solved is None:
            continue
        inv_bw, layer_s = solved
        bws.append((dev, 1.0 / inv_bw))
        layer_costs.append(layer_s if len(r) > 1 else fallback_layer_s)
    return tuple(bws), (sum(layer_costs) / len(layer_costs) if layer_costs else None)


def fit(
    observations: Sequence[Observation],
    *,
    calibrated_at: str,
    h2d: tuple[tuple[str, float], ...] = (),
    reference_layer_s: float = 0.11e-3,
) -> SpeedModel | None:
    """A SpeedModel from every observation (calibration and tune runs); None when nothing usable."""
    cpu = fit_cpu(observations)
    if not cpu:
        return None
    model = SpeedModel(cpu=cpu, h2d_bytes_s=h2d, calibrated_at=calibrated_at)
    gpu_bw, gpu_layer = fit_gpu(observations, model, reference_layer_s)
    refitted = tuple(sorted({o.source[5:] for o in observations if o.source.startswith("tune:") and o.usable}))
    return SpeedModel(
        cpu=cpu,
        gpu_bandwidth=gpu_bw,
        gpu_layer_s=gpu_layer,
        h2d_bytes_s=h2d,
        calibrated_at=calibrated_at,
        refitted_from=refitted,
    )


def spread(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """(lowest, highest) relative error of predicted vs measured, in percent."""
    errs = [100.0 * (p - m) / m for p, m in pairs if m > 0]
    return (min(errs), max(errs)) if errs else (0.0, 0.0)
