"""`runq calibrate`: measure this machine's decode constants with llama.cpp itself, and keep them.

Edge module (generates models, runs llama-bench, reads and writes the cache). How: four generated models
(qwen3moe and deepseek2, wide and deep, 47-185 MB read per token; launcher/synth.py, kept under the cache for
the next calibration) are decoded by llama-bench (`-p 0 -n 16`, six repetitions, up to three passes, the
median kept) at 1, 2, 4… physical-core threads. Seconds per token against bytes per token and layers gives,
per thread count, the effective RAM bandwidth as llama.cpp's own kernels read weights, and a per-layer cost
(launcher/speed.py fits it by least squares over the four). That is the honest number for the planner: it
includes dequantisation, threading and whatever the memory system really delivers, which a memcpy loop
would not.

With GPUs (CUDA build): two more generated models (Q4_K, every expert used: 0.24 and 0.95 GB per token)
decoded with every layer on each GPU give its effective bandwidth, and a prompt with their experts in RAM
an approximate host-to-device copy speed. First run on an H200 (2026-11-27, 16-core Xeon): 28 s in all,
7.6 GB/s at 1 thread to 98.5 GB/s at 16, CUDA0 1,629 GB/s effective, host-to-device about 6.7 GB/s.

Stored in `<cache>/calibration/<fingerprint>.json` with the machine fingerprint (CPU model, cores, RAM,
GPU names, memory and driver, llama.cpp build): a changed machine or build is calibrated again.
`runq tune` appends its measurements, and the constants are refitted from all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.machine import speed
from launcher.machine.spec import Machine
from launcher.machine.speed import Observation, SpeedModel
from launcher.measure.synth import SynthSpec
from launcher.paths import calibration_dir

BUDGET_S = 60.0
# Four shapes, two per attention kind (GQA qwen3moe, MLA deepseek2): per kind a wide few-layer one and a narrow
# many-layer one (so bandwidth and per-layer cost separate), one reading 47-68 MB per token (4 of 32 experts)
# and one 126-185 MB (8 of 16), so neither one shape's quirks (narrow rows, MLA's extra matrices, what stays in
# the L3 cache) nor one noisy measurement sets the constants alone: least squares over all four. Files of
# 210-330 MiB, written once. Q8_0, like the generated models the tests and benchmarks use.
_GQA: dict[str, Any] = dict(arch="qwen3moe", n_head_kv=2)
_MLA: dict[str, Any] = dict(arch="deepseek2", qk_nope_dim=64, qk_rope_dim=32, v_head_dim=64)
CALIBRATION_SPECS = {
    "cal-wide": SynthSpec(**_GQA, n_layer=4, n_embd=1536, n_ff_exp=1024, n_expert=16, n_expert_used=8, n_head=12,
                          head_dim=128, seed=11),
    "cal-deep": SynthSpec(**_GQA, n_layer=20, n_embd=384, n_ff_exp=384, n_expert=32, n_expert_used=4, n_head=6,
                          head_dim=64, seed=12),
    "cal-mla-wide": SynthSpec(**_MLA, n_layer=4, n_embd=1536, n_ff=3072, n_ff_exp=512, n_expert=32, n_expert_used=4,
                              n_head=16, q_lora_rank=384, kv_lora_rank=128, seed=15),
    "cal-mla-deep": SynthSpec(**_MLA, n_layer=16, n_embd=512, n_ff=1024, n_ff_exp=512, n_expert=16, n_expert_used=8,
                              n_head=8, q_lora_rank=128, kv_lora_rank=128, seed=16),
}  # fmt: skip
# GPUs read hundreds of GB/s: a model must read about a GB per token before its speed says more about the
# bandwidth than about kernel launches. Two shapes, same layers, 4x apart in bytes (about 0.24 and 0.95 GB per
# token: every expert is used). Q4_K like most GPU-resident quants; gguf-py cannot quantize it, so the weights
# are zeros, which read exactly as many bytes and are written in seconds.
GPU_CALIBRATION_SPECS = {
    "cal-gpu-s": SynthSpec(arch="qwen3moe", n_layer=8, n_embd=2048, n_ff_exp=1024, n_expert=8, n_expert_used=8,
                           n_head=16, n_head_kv=4, head_dim=128, weight_type="Q4_K", seed=13),
    "cal-gpu-l": SynthSpec(arch="qwen3moe", n_layer=8, n_embd=4096, n_ff_exp=2048, n_expert=8, n_expert_used=8,
                           n_head=32, n_head_kv=4, head_dim=128, weight_type="Q4_K", seed=14),
}  # fmt: skip
GEN_TOKENS = 16
REPETITIONS = 6  # short runs; the median of all of them (every pass) is kept
MAX_PASSES = 3
BUSY_LOAD_PER_CORE = 0.5  # a 1-minute load average above this per core is reported: the figures will be low


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(machine: Machine, build_key: str) -> dict[str, Any]:
    """What, if it changed, makes the measured constants wrong."""
    return {
        "cpu": _cpu_model(),
        "physical_cores": machine.cpu.physical_cores,
        "logical_cores": machine.cpu.logical_cores,
        "ram_gib": round(machine.ram_total_bytes / 2**30),
        "gpus": [[g.name, round(g.total_bytes / 2**30)] for g in machine.gpus],
        "driver": machine.driver_version,
        "build": build_key,
    }


def _hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def store_path(fp: dict[str, Any]) -> Path:
    return calibration_dir() / f"{_hash(fp)}.json"


def load_record(fp: dict[str, Any]) -> dict[str, Any] | None:
    path = store_path(fp)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("fingerprint") == fp else None


def _write(fp: dict[str, Any], rec: dict[str, Any]) -> Path:
    path = store_path(fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)
    return path


def observations(rec: dict[str, Any]) -> list[Observation]:
    out = []
    for o in rec.get("observations", []):
        out.append(
            Observation(
                threads=int(o["threads"]),
                n_layer=int(o["n_layer"]),
                cpu_bytes=int(o["cpu_bytes"]),
                tg_tps=float(o["tg_tps"]),
                gpu_bytes=tuple((str(d), int(n)) for d, n in o.get("gpu_bytes", [])),
                source=str(o.get("source", "calibrate")),
                spread=float(o.get("spread", 0.0)),
                busy=float(o.get("busy", 0.0)),
            )
        )
    return out


def provisional(rec: dict[str, Any]) -> str:
    """Why a calibration is to be measured again: it stopped short, or it was taken under load ("": neither)."""
    if rec.get("incomplete"):
        return f"incomplete, {rec['incomplete']}"
    noisy = [o for o in observations(rec) if o.source == "calibrate" and o.noisy]
    if not noisy:
        return ""
    busy = max(o.busy for o in noisy)
    apart = max(o.spread for o in noisy)
    return (f"taken under load, other processes used {100 * busy:.0f}% of the CPUs and its repetitions were up to"
            f" {100 * apart:.0f}% apart")  # fmt: skip


def speed_model(rec: dict[str, Any], machine: Machine | None = None) -> SpeedModel | None:
    """The constants fitted from a record, within this machine's peaks (a described RAM bandwidth, each GPU's)."""
    h2d = tuple((str(d), float(v)) for d, v in rec.get("h2d", []))
    gpu_peaks = {f"CUDA{g.index}": bw for g in (machine.gpus if machine else ()) if (bw := g.memory_bandwidth)}
    return speed.fit(
        observations(rec),
        calibrated_at=str(rec.get("calibrated_at", "")),
        h2d=h2d,
        cpu_peak=machine.ram_bandwidth_bytes_s if machine else None,
        gpu_peaks=gpu_peaks,
        provisional=provisional(rec),
    )


def load(machine: Machine, build_key: str) -> SpeedModel | None:
    rec = load_record(fingerprint(machine, build_key))
    return speed_model(rec, machine) if rec else None


def idle_now(machine: Machine) -> bool:
    """The 1-minute load average is low enough for a calibration to measure the machine, not its neighbours."""
    logical = machine.cpu.logical_cores or machine.cores
    return not hasattr(os, "getloadavg") or os.getloadavg()[0] <= BUSY_LOAD_PER_CORE * logical


def add_observations(machine: Machine, build_key: str, new: list[Observation]) -> SpeedModel | None:
    """Add tune measurements (replacing earlier ones from the same source) and refit. None: not calibrated."""
    fp = fingerprint(machine, build_key)
    rec = load_record(fp)
    if rec is None or not new:
        return None
    sources = {o.source for o in new}
    kept = [o for o in rec.get("observations", []) if o.get("source") not in sources]
    rec["observations"] = kept + [_obs_json(o) for o in new]
    _write(fp, rec)
    return speed_model(rec, machine)


def _obs_json(o: Observation) -> dict[str, Any]:
    d = asdict(o)
    d["gpu_bytes"] = [list(x) for x in o.gpu_bytes]
    return d


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalModel:
    name: str
    path: Path
    n_layer: int
    bytes_per_token: int
    expert_bytes: int


def _model_path(name: str, spec: SynthSpec) -> Path:
    return calibration_dir() / "models" / f"{name}-{_hash(asdict(spec))[:8]}.gguf"


def calibration_models(say: Callable[[str], None], specs: dict[str, SynthSpec] | None = None) -> list[CalModel]:
    """The generated calibration models (written once, kept under the cache)."""
    from launcher.measure.synth import write_model
    from launcher.model.shards import open_local
    from launcher.plan.predict import bytes_per_token

    out = []
    for name, spec in (CALIBRATION_SPECS if specs is None else specs).items():
        path = _model_path(name, spec)
        if not path.is_file():
            say(f"generating calibration model {name} (once)…")
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            write_model(spec, tmp)
            tmp.replace(path)
        model = open_local(path)
        t, hp = model.tensors, model.hparams
        per = bytes_per_token(t, hp, {x.name: "CPU" for x in t.tensors})
        expert = sum(x.nbytes for x in t.tensors if x.is_expert)
        out.append(CalModel(name, path, hp.n_layer, per.get("CPU", 0), expert))
    return out


def announce(machine: Machine, earlier: SpeedModel | None) -> str:
    """What an automatic calibration is about to do and how long it takes, before it starts."""
    missing = [n for n, spec in CALIBRATION_SPECS.items() if not _model_path(n, spec).is_file()]
    what = (f"at most {BUDGET_S:.0f} s decoding {len(CALIBRATION_SPECS)} generated models with llama-bench"
            + (f" on the CPU and each of {len(machine.gpus)} GPU(s)" if machine.gpus else ""))  # fmt: skip
    if missing:  # written once, then kept: 1.1 GB of Q8_0, 34 s on an idle 2-core EPYC, 121 s on a busy one
        what += f", after generating {len(missing)} of them (about 1.1 GB, once: 30 s to 2 min)"
    why = f"again (the last one is provisional: {earlier.provisional})" if earlier else "once"
    return f"Calibrating this machine {why}: {what}. --no-calibrate skips it."


def thread_counts(physical: int) -> list[int]:
    """1, 2, 4… up to the physical cores, and the physical count itself."""
    out = {physical}
    n = 1
    while n < physical:
        out.add(n)
        n *= 2
    return sorted(out)


def calibrate(
    machine: Machine, bin_dir: Path, build_key: str, *, cuda: bool, say: Callable[[str], None]
) -> tuple[SpeedModel, dict[str, Any], Path]:
    """Measure, store and return the fitted constants (with the record and where it was stored)."""
    from launcher.errors import ExternalToolError

    start = time.monotonic()
    models = calibration_models(say)
    gpu_models = calibration_models(say, GPU_CALIBRATION_SPECS) if cuda and machine.gpus else []
    generated_s = time.monotonic() - start  # zero after the first calibration: the models are kept
    threads = thread_counts(machine.cores)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    logical = machine.cpu.logical_cores or machine.cores
    if load > BUSY_LOAD_PER_CORE * logical:
        say(f"warning: this machine is busy (load {load:.1f} on {logical} cores): the figures measure it as it is"
            " now; run `runq calibrate` again when it is idle")  # fmt: skip
    say(f"decoding {len(models)} models at {', '.join(map(str, threads))} threads with llama-bench"
        f" (at most {BUDGET_S:.0f} s)…")  # fmt: skip
    deadline = start + generated_s + BUDGET_S * (0.6 if gpu_models else 1.0)  # the rest: the GPUs
    obs, error, log_tail = _cpu_passes(bin_dir, models, threads, deadline)
    if not obs:
        raise ExternalToolError(
            f"calibration measured nothing: {error or 'llama-bench printed no results'}",
            hint="check the build with `runq build --list`; the end of llama-bench's log: " + " | ".join(log_tail[-3:]),
        )
    h2d: list[tuple[str, float]] = []
    if gpu_models:
        left = max(BUDGET_S + generated_s - (time.monotonic() - start), 10.0)
        obs += _gpu_observations(bin_dir, gpu_models, machine, left, h2d)
    fp = fingerprint(machine, build_key)
    previous = load_record(fp)
    obs, kept = prefer_idle(obs, observations(previous) if previous else [])
    if error and len([o for o in obs if not o.gpu_bytes]) >= len(models) * len(threads):
        error = None  # what this one could not measure, an earlier idle one had
    meta = {
        "took_s": round(time.monotonic() - start, 1),
        "generating_s": round(generated_s, 1),
        "threads": threads,
        "models": {m.name: {"bytes_per_token": m.bytes_per_token, "n_layer": m.n_layer} for m in models},
        "h2d": h2d,
        "incomplete": error,
        "load_before": round(load, 2),
        "kept_earlier": kept,
    }
    return record(machine, build_key, obs, meta)


def record(
    machine: Machine, build_key: str, obs: list[Observation], meta: dict[str, Any]
) -> tuple[SpeedModel, dict[str, Any], Path]:
    """Store a calibration of this machine and build — its observations, and how they were measured (`meta`) —
    and return the constants fitted to it, the record and where it is."""
    rec: dict[str, Any] = {
        "fingerprint": fingerprint(machine, build_key),
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
        "observations": [_obs_json(o) for o in obs],
        "busy": round(max((o.busy for o in obs), default=0.0), 3),
        "spread": round(max((o.spread for o in obs), default=0.0), 3),
    }
    path = _write(rec["fingerprint"], rec)
    model = speed_model(rec, machine)
    if model is None:
        raise ValueError("a calibration needs CPU observations with bytes read")
    return model, rec, path


def prefer_idle(new: list[Observation], old: list[Observation]) -> tuple[list[Observation], int]:
    """This calibration's measurements, except where it was under load (or measured nothing) and an earlier
    calibration of the same machine and build measured the same model and threads idle: that one is kept, so a
    busy recalibration never replaces what an idle one measured. Also how many were kept from before."""
    earlier = {o.shape: o for o in old if o.source == "calibrate" and not o.noisy}
    out = [earlier.get(o.shape, o) if o.noisy else o for o in new]
    seen = {o.shape for o in new}
    out += [o for shape, o in earlier.items() if shape not in seen]
    return out, sum(1 for o in out if o in earlier.values())


@dataclass(frozen=True)
class Decoded:
    """One model at one thread count, over every pass."""

    tps: float  # the median of every repetition of every pass
    spread: float  # how far those repetitions were apart (speed.relative_spread)
    busy: float  # the most of the CPUs other processes used during a pass that measured it


def decode_runs(
    bin_dir: Path, paths: list[Path], threads: list[int], deadline: float, passes: int = MAX_PASSES
) -> tuple[dict[tuple[str, int], Decoded], str | None, tuple[str, ...]]:
    """Decode speed per (model path, threads): passes over every model and thread count (model order
    alternating) while the time lasts; the median of every repetition of every pass, so neither a disturbed
    pass nor a lucky repetition decides, and how far they were apart and how busy the machine was."""
    from launcher.llama import bench as bench_run

    samples: dict[tuple[str, int], list[float]] = {}
    busy: dict[tuple[str, int], float] = {}
    error: str | None = None
    tail: tuple[str, ...] = ()
    took = 0.0
    for n in range(max(1, passes)):
        left = deadline - time.monotonic()
        if n and left < 1.5 * took:
            break
        argv = bench_run.command(bin_dir)
        for path in paths if n % 2 == 0 else paths[::-1]:
            argv += ["-m", str(path)]
        argv += ["-p", "0", "-n", str(GEN_TOKENS), "-r", str(REPETITIONS), "-t", ",".join(map(str, threads))]
        res = bench_run.run([*argv, "-ngl", "0", "-o", "jsonl"], timeout_s=max(left, 10.0 if n == 0 else 1.0))
        took, tail = res.seconds, res.log_tail
        for t in res.tests:
            if t.get("n_gen"):
                k = (t.get("model_filename", ""), int(t["n_threads"]))
                samples.setdefault(k, []).extend(float(x) for x in t.get("samples_ts") or [t["avg_ts"]])
                busy[k] = max(busy.get(k, 0.0), res.busy_share)
        if res.error:
            error = None if samples and n else res.error  # a later pass cut short by the budget is no problem
            break
    out = {k: Decoded(statistics.median(v), speed.relative_spread(v), busy[k]) for k, v in samples.items()}
    return out, error, tail


def decode_passes(
    bin_dir: Path, paths: list[Path], threads: list[int], deadline: float, passes: int = MAX_PASSES
) -> tuple[dict[tuple[str, int], float], str | None, tuple[str, ...]]:
    """decode_runs' medians alone (what bench/predict.py measures with)."""
    runs, error, tail = decode_runs(bin_dir, paths, threads, deadline, passes)
    return {k: d.tps for k, d in runs.items()}, error, tail


def _cpu_passes(
    bin_dir: Path, models: list[CalModel], threads: list[int], deadline: float
) -> tuple[list[Observation], str | None, tuple[str, ...]]:
    passes = int(os.environ.get("RUNQ_CALIBRATE_PASSES") or MAX_PASSES)  # the tests make it 1 (2 shared cores)
    runs, error, tail = decode_runs(bin_dir, [m.path for m in models], threads, deadline, passes)
    by_path = {str(m.path): m for m in models}
    obs = [Observation(th, by_path[p].n_layer, by_path[p].bytes_per_token, d.tps, spread=d.spread, busy=d.busy)
           for (p, th), d in sorted(runs.items()) if p in by_path]  # fmt: skip
    return obs, error, tail


def _gpu_observations(
    bin_dir: Path, models: list[CalModel], machine: Machine, left_s: float, h2d: list[tuple[str, float]]
) -> list[Observation]:
    """Each GPU alone (`-dev CUDAi`): the GPU calibration models decoded with every layer on it; a prompt
    with the experts in RAM for the copy speed (llama.cpp copies CPU-resident weights to the GPU for large
    batches, so every expert byte crosses once per 512-token batch: a lower bound of the link's speed)."""
    from launcher.llama import bench as bench_run

    out: list[Observation] = []
    per_gpu = max(5.0, left_s / max(1, len(machine.gpus)))
    for g in machine.gpus:
        dev = f"CUDA{g.index}"
        argv = bench_run.command(bin_dir)
        for m in models:
            argv += ["-m", str(m.path)]
        argv += ["-dev", dev, "-ngl", "99", "-p", "0", "-n", str(GEN_TOKENS), "-r", str(REPETITIONS), "-o", "jsonl"]
        res = bench_run.run(argv, timeout_s=per_gpu / 2, gpus=True)
        by_path = {str(m.path): m for m in models}
        for t in res.tests:
            cm = by_path.get(t.get("model_filename", ""))
            if cm and t.get("n_gen"):
                gb = ((dev, cm.bytes_per_token),)
                apart = speed.relative_spread([float(x) for x in t.get("samples_ts") or []])
                out.append(Observation(int(t["n_threads"]), cm.n_layer, 0, bench_run.best_tps(t), gb,
                                       spread=apart, busy=res.busy_share))  # fmt: skip
        big = max(models, key=lambda m: m.expert_bytes)
        argv = [*bench_run.command(bin_dir), "-m", str(big.path), "-dev", dev, "-ngl", "99"]
        argv += ["-ot", r"\.ffn_.*_exps\.=CPU", "-p", "512", "-n", "0", "-ub", "512", "-r", "1", "-o", "jsonl"]
        res = bench_run.run(argv, timeout_s=per_gpu / 2, gpus=True)
        pp = res.tps(prompt=True)
        if pp:
            h2d.append((dev, big.expert_bytes * pp / 512))  # every expert byte crosses once per 512-token batch
    return out
