"""Decode speed constants measured on this machine, and how they are fitted from measurements.

Pure: no I/O. `runq calibrate` (launcher/measure/calibrate.py) and `runq tune` measure llama-bench decode
on models of known bytes per token; this module turns those measurements into a SpeedModel
(effective CPU bandwidth and per-layer cost for each thread count measured, effective GPU bandwidth)
by least squares over

    seconds per token = bytes read from RAM / cpu_bandwidth(threads)
                      + sum over GPUs of bytes read there / gpu_bandwidth
                      + layers x per-layer cost

weighted by relative error and by how far the measurement's repetitions disagree, so a small fast model
counts as much as a big slow one and a noisy one counts little. Measurements are not taken as truth:
- one whose repetitions (and repeats of the same shape) spread more than MAX_SPREAD is left out;
- the constants stay within physical bounds (a per-layer cost of at least MIN_LAYER_S, a bandwidth under the
  machine's peak: described, or CPU_PEAK_PER_THREAD per thread, or a GPU's own);
- a measurement taken under load (its repetitions spread more than NOISY_SPREAD, or other processes used more
  than BUSY_SHARE of the CPUs) moves the constants fitted from the clean ones by at most its own spread.
Without a SpeedModel the planner uses the reference constants in launcher/plan/memory.py (H200 + 16-core Xeon).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

REFERENCE = "reference constants"
# A model reading less than this per token decodes from the CPU's caches, not from RAM: its speed says nothing
# about the memory bandwidth, so it is not fitted (the calibration models read about 50 MB per token).
MIN_FIT_BYTES_PER_TOKEN = 16 * 2**20
# Physical bounds. A layer is a dozen kernels and a thread barrier or two: no machine decodes one in under 5 µs
# (measured: 43 µs at 1 thread on a 2-core EPYC, 110 µs at 16 threads on a Xeon); 20 ms would be a broken one.
MIN_LAYER_S, MAX_LAYER_S = 5e-6, 20e-3
MIN_BANDWIDTH = 1e8  # 0.1 GB/s: slower than any RAM
# No core streams more than this from RAM (x86 server cores 10-40 GB/s, Apple's performance cores about 100).
CPU_PEAK_PER_THREAD = 128e9
NOISY_SPREAD = 0.15  # repetitions further apart than this (fastest - slowest, over the median): taken under load
MAX_SPREAD = 0.5  # further apart than this: it measured the neighbours, not the machine; left out
BUSY_SHARE = 0.25  # other processes used more than this share of the CPUs while it measured: taken under load
_BASE_SPREAD = 0.03  # the run-to-run noise of an idle machine: weights never grow without bound


def relative_spread(samples: Sequence[float]) -> float:
    """(fastest - slowest) / median of a measurement's repetitions; 0 for fewer than two."""
    xs = [x for x in samples if x > 0]
    if len(xs) < 2:
        return 0.0
    return (max(xs) - min(xs)) / statistics.median(xs)


@dataclass(frozen=True)
class Observation:
    """One measured decode: what each device read per token, the layers, the threads, and the speed."""

    threads: int
    n_layer: int
    cpu_bytes: int  # weight bytes read from RAM per token
    tg_tps: float
    gpu_bytes: tuple[tuple[str, int], ...] = ()  # (device, bytes per token), e.g. ("CUDA0", 1_200_000_000)
    source: str = "calibrate"  # "calibrate" or "tune:<model>"
    spread: float = 0.0  # relative_spread of its repetitions
    busy: float = 0.0  # the share of the CPUs other processes used while it was measured

    @property
    def seconds(self) -> float:
        return 1.0 / self.tg_tps

    @property
    def usable(self) -> bool:
        return self.tg_tps > 0 and self.cpu_bytes + sum(n for _, n in self.gpu_bytes) >= MIN_FIT_BYTES_PER_TOKEN

    @property
    def noisy(self) -> bool:
        """Taken under load: its repetitions disagree, or other processes were using the CPUs."""
        return self.spread > NOISY_SPREAD or self.busy > BUSY_SHARE

    @property
    def shape(self) -> tuple[int, int, int, tuple[tuple[str, int], ...]]:
        return self.threads, self.n_layer, self.cpu_bytes, self.gpu_bytes


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
    provisional: str = ""  # why the calibration is to be measured again ("" when it is not)
    tune_under_load: bool = False  # some of the tune runs fitted were taken under load
    noisy_tune_spread: float = 0.0  # and moved the constants fitted from clean ones by at most this (relative)

    @property
    def label(self) -> str:
        text = f"calibrated on this machine, {self.calibrated_at[:10]}"
        if self.provisional:
            text += f" (provisional: {self.provisional}; measured again on a run when the machine is idle)"
        if self.refitted_from:
            text += f", refitted from tune runs of {len(self.refitted_from)} model(s)"
            if self.noisy_tune_spread:
                text += f" (under load: moved by at most ±{100 * self.noisy_tune_spread:.0f}%)"
            elif self.tune_under_load:
                text += " (taken under load)"
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

    def fastest_threads(self, most: int, n_layer: int, cpu_bytes: int, *, on_gpu: bool = False) -> int:
        """The thread count (a measured one up to `most`, or `most`) these constants predict decodes a model
        fastest: more threads is not faster where the calibration measured it slower. Ties: more threads. Fewer
        than `most` (llama.cpp's own default, the physical cores) only from a calibration that is not provisional
        and predicts them FEWER_THREADS_GAIN faster: an untuned plan is never slower than llama.cpp's default
        because of one noisy calibration."""
        counts = sorted({p.threads for p in self.cpu if p.threads <= most} | {most})

        def seconds(t: int) -> float:
            cpu = self.cpu_at(t)
            layer_s = self.gpu_layer_s if (on_gpu and self.gpu_layer_s is not None) else cpu.layer_s
            return cpu_bytes / cpu.bandwidth + n_layer * layer_s

        best = min(reversed(counts), key=seconds)
        if best < most and (self.provisional or seconds(best) * (1 + FEWER_THREADS_GAIN) > seconds(most)):
            return most
        return best


# --- fitting ---------------------------------------------------------------------------------------------------


FEWER_THREADS_GAIN = 0.10  # a predicted gain that fewer threads than the cores must show to be used untuned


@dataclass(frozen=True)
class _Row:
    x: float  # bytes per token
    z: float  # layers
    y: float  # seconds per token
    w: float  # weight: relative error, and less for a spread-out measurement
    spread: float = 0.0


def _row(x: float, z: float, y: float, spread: float) -> _Row:
    return _Row(x, z, y, 1.0 / (y * y * (_BASE_SPREAD**2 + spread**2)), spread)


def _cost(rows: Sequence[_Row], a: float, c: float) -> float:
    return sum(r.w * (a * r.x + c * r.z - r.y) ** 2 for r in rows)


def _clamp(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _solve(
    rows: Sequence[_Row], a_box: tuple[float, float], c_box: tuple[float, float], c_prior: float
) -> tuple[float, float] | None:
    """Weighted least squares y ~ a x + c z with a and c each within its box (a = 1 / bandwidth, c = per-layer
    cost). Shapes that cannot separate the two (one model, or all the same shape) take c = c_prior."""
    if not rows or all(r.x <= 0 for r in rows):
        return None
    sxx = sum(r.w * r.x * r.x for r in rows)
    sxz = sum(r.w * r.x * r.z for r in rows)
    szz = sum(r.w * r.z * r.z for r in rows)
    sxy = sum(r.w * r.x * r.y for r in rows)
    szy = sum(r.w * r.z * r.y for r in rows)
    (a_lo, a_hi), (c_lo, c_hi) = a_box, c_box

    def a_for(c: float) -> float:
        return _clamp((sxy - c * sxz) / sxx, a_lo, a_hi)

    def c_for(a: float) -> float:
        return _clamp((szy - a * sxz) / szz, c_lo, c_hi) if szz > 0 else _clamp(c_prior, c_lo, c_hi)

    det = sxx * szz - sxz * sxz
    if det <= 1e-9 * max(sxx * szz, 1e-300):
        c = _clamp(c_prior, c_lo, c_hi)
        return a_for(c), c
    a = (sxy * szz - szy * sxz) / det
    c = (sxx * szy - sxz * sxy) / det
    if a_lo <= a <= a_hi and c_lo <= c <= c_hi:
        return a, c
    # The optimum of a convex quadratic outside the box lies on the box's edge: the best of the four edges.
    edges = [(a_for(c_lo), c_lo), (a_for(c_hi), c_hi), (a_lo, c_for(a_lo)), (a_hi, c_for(a_hi))]
    return min(edges, key=lambda ac: _cost(rows, *ac))


def _merged(observations: Iterable[Observation]) -> list[Observation]:
    """Usable observations, one per shape: repeats of the same placement (tune's candidates that differ in
    knobs decode doesn't read, a confirming run) become their median, spread as far as they disagree."""
    by_shape: dict[tuple[object, ...], list[Observation]] = {}
    for o in observations:
        if o.usable:
            by_shape.setdefault(o.shape, []).append(o)
    out = []
    for group in by_shape.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        tps = [o.tg_tps for o in group]
        spread = max(relative_spread(tps), *(o.spread for o in group))
        out.append(replace(group[0], tg_tps=statistics.median(tps), spread=spread, busy=max(o.busy for o in group)))
    return out


def _kept(observations: Iterable[Observation]) -> list[Observation]:
    """Merged, less the ones spread too far to say anything (unless nothing else is left)."""
    merged = _merged(observations)
    return [o for o in merged if o.spread <= MAX_SPREAD] or merged


def fit_cpu(
    observations: Iterable[Observation], *, peak: float | None = None, layer_prior: float = 0.11e-3
) -> tuple[CpuPoint, ...]:
    """One CpuPoint per thread count from CPU-only decodes (those with no GPU bytes), within physical bounds:
    the bandwidth under `peak` (the machine's, when known) and CPU_PEAK_PER_THREAD per thread. Measurements spread
    more than MAX_SPREAD are left out; where a thread count has nothing else, they cannot separate two constants:
    its per-layer cost is the prior, and only its bandwidth is fitted."""
    by_threads: dict[int, list[_Row]] = {}
    for o in _merged(observations):
        if not o.gpu_bytes:
            by_threads.setdefault(o.threads, []).append(_row(o.cpu_bytes, o.n_layer, o.seconds, o.spread))
    wild: set[int] = set()
    for threads, rows in by_threads.items():
        sane = [r for r in rows if r.spread <= MAX_SPREAD]
        by_threads[threads] = sane or rows
        if not sane:
            wild.add(threads)

    def separates(t: int) -> bool:
        return t not in wild and len({(r.x, r.z) for r in by_threads[t]}) >= 2

    solved: dict[int, tuple[float, float]] = {}
    # Thread counts whose shapes separate bandwidth from per-layer cost first: the others borrow the per-layer
    # cost of the nearest of them.
    for threads in sorted(by_threads, key=lambda t: not separates(t)):
        near = min(solved, key=lambda t: abs(t - threads), default=None)
        prior = _clamp(solved[near][1] if near is not None else layer_prior, MIN_LAYER_S, MAX_LAYER_S)
        top = min(peak or float("inf"), CPU_PEAK_PER_THREAD * threads)
        c_box = (prior, prior) if threads in wild else (MIN_LAYER_S, MAX_LAYER_S)
        ac = _solve(by_threads[threads], (1.0 / top, 1.0 / MIN_BANDWIDTH), c_box, prior)
        if ac is not None:
            solved[threads] = ac
    return tuple(CpuPoint(t, 1.0 / a, c) for t, (a, c) in sorted(solved.items()))


def fit_gpu(
    observations: Iterable[Observation],
    cpu: SpeedModel,
    fallback_layer_s: float,
    peaks: Mapping[str, float] | None = None,
) -> tuple[tuple[tuple[str, float], ...], float | None]:
    """Effective bandwidth per GPU (and one per-layer cost) from decodes that read from GPUs: what the CPU
    part does not explain, over the GPU bytes; each under its GPU's peak. Empty when nothing was measured on a
    GPU."""
    rows: dict[str, list[_Row]] = {}
    for o in _kept(observations):
        if not o.gpu_bytes:
            continue
        cpu_s = o.cpu_bytes / cpu.cpu_at(o.threads).bandwidth if o.cpu_bytes else 0.0
        rest = o.seconds - cpu_s
        if rest <= 0:
            continue
        # One GPU dominates each row (the one reading the most); rows are split per device.
        dev, _n = max(o.gpu_bytes, key=lambda kv: kv[1])
        total_gpu = sum(b for _, b in o.gpu_bytes)
        rows.setdefault(dev, []).append(_row(total_gpu, o.n_layer, rest, o.spread))
    bws = []
    layer_costs = []
    for dev, r in sorted(rows.items()):
        top = (peaks or {}).get(dev) or float("inf")
        solved = _solve(r, (1.0 / top, 1.0 / MIN_BANDWIDTH), (MIN_LAYER_S, MAX_LAYER_S), fallback_layer_s)
        if solved is None:
            continue
        inv_bw, layer_s = solved
        bws.append((dev, 1.0 / inv_bw))
        layer_costs.append(layer_s)
    return tuple(bws), (sum(layer_costs) / len(layer_costs) if layer_costs else None)


def _within(value: float, center: float, spread: float) -> float:
    return _clamp(value, center / (1 + spread), center * (1 + spread))


def _trusted(
    cpu: tuple[CpuPoint, ...], clean: tuple[CpuPoint, ...], noisy: Sequence[Observation]
) -> tuple[CpuPoint, ...]:
    """Each thread count's constants within the spread of its noisy measurements of what the clean ones alone
    say, so a measurement taken under load moves a prediction by no more than it measured itself."""
    if not clean:
        return cpu
    center = SpeedModel(cpu=clean)
    out = []
    for p in cpu:
        spreads = [o.spread for o in noisy if o.threads == p.threads and not o.gpu_bytes]
        if not spreads:
            out.append(p)
            continue
        c, s = center.cpu_at(p.threads), max(spreads)
        out.append(CpuPoint(p.threads, _within(p.bandwidth, c.bandwidth, s), _within(p.layer_s, c.layer_s, s)))
    return tuple(out)


def fit(
    observations: Sequence[Observation],
    *,
    calibrated_at: str,
    h2d: tuple[tuple[str, float], ...] = (),
    reference_layer_s: float = 0.11e-3,
    cpu_peak: float | None = None,
    gpu_peaks: Mapping[str, float] | None = None,
    provisional: str = "",
) -> SpeedModel | None:
    """A SpeedModel from every observation (calibration and tune runs); None when nothing usable."""
    kept = _kept(observations)
    clean = [o for o in kept if not o.noisy]
    noisy = [o for o in kept if o.noisy]
    cpu = fit_cpu(kept, peak=cpu_peak, layer_prior=reference_layer_s)
    if not cpu:
        return None
    if noisy and clean:
        cpu = _trusted(cpu, fit_cpu(clean, peak=cpu_peak, layer_prior=reference_layer_s), noisy)
    model = SpeedModel(cpu=cpu, h2d_bytes_s=h2d, calibrated_at=calibrated_at)
    gpu_bw, gpu_layer = fit_gpu(kept, model, reference_layer_s, gpu_peaks)
    if noisy and clean and gpu_bw:
        clean_bw = dict(fit_gpu(clean, model, reference_layer_s, gpu_peaks)[0])
        spread = max((o.spread for o in noisy if o.gpu_bytes), default=0.0)
        gpu_bw = tuple((d, _within(bw, clean_bw[d], spread) if d in clean_bw else bw) for d, bw in gpu_bw)
    tune_used = [o for o in kept if o.source.startswith("tune:")]
    return SpeedModel(
        cpu=cpu,
        gpu_bandwidth=gpu_bw,
        gpu_layer_s=gpu_layer,
        h2d_bytes_s=h2d,
        calibrated_at=calibrated_at,
        refitted_from=tuple(sorted({o.source[5:] for o in tune_used})),
        provisional=provisional,
        tune_under_load=any(o.noisy for o in tune_used),
        noisy_tune_spread=max((o.spread for o in tune_used if o.noisy and clean), default=0.0),
    )


def spread(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """(lowest, highest) relative error of predicted vs measured, in percent."""
    errs = [100.0 * (p - m) / m for p, m in pairs if m > 0]
    return (min(errs), max(errs)) if errs else (0.0, 0.0)
