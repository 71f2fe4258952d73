"""Run llama-bench once and read what it measured: tokens/s per test, peak memory per device.

Edge module (starts a process). The child is runq's for its whole life: on a timeout, an error or
Ctrl-C it is killed (by its pid) before this returns or re-raises. Peak host memory is the child's
own maximum resident set (os.wait4); peak GPU memory is NVML's used memory sampled every 0.2 s
while it runs (only when there are GPUs; not exercised on the CPU-only test machine). How busy the machine was
meanwhile is measured too: the CPU time every process used (/proc/stat) less the child's own (its rusage), as a
share of the machine's, so a measurement taken under load can be told from one taken idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.llama import procs


@dataclass(frozen=True)
class BenchResult:
    tests: tuple[dict[str, Any], ...]  # llama-bench's JSONL records
    peak_bytes: dict[str, int]  # "CPU" (max RSS) and "CUDA0"… (NVML used, minus what was used before)
    seconds: float
    error: str | None = None
    log_tail: tuple[str, ...] = field(default=())
    busy_share: float = 0.0  # the share of the CPUs other processes used while it ran (0 where unknown)

    def _test(self, prompt: bool, depth: int | None) -> dict[str, Any] | None:
        for t in self.tests:
            kind = (t.get("n_prompt", 0) > 0) == prompt and (t.get("n_gen", 0) > 0) != prompt
            if kind and (depth is None or int(t.get("n_depth", 0)) == depth):
                return t
        return None

    def tps(self, *, prompt: bool, depth: int | None = None) -> float | None:
        """Average tokens/s of the prompt (n_prompt > 0) or generation (n_gen > 0) test (at that depth: n_depth)."""
        t = self._test(prompt, depth)
        return float(t["avg_ts"]) if t else None

    def samples(self, *, prompt: bool, depth: int | None = None) -> tuple[float, ...]:
        """The tokens/s of each repetition of the prompt or generation test (llama-bench's samples_ts)."""
        t = self._test(prompt, depth)
        return tuple(float(x) for x in t.get("samples_ts") or [t["avg_ts"]]) if t else ()


def best_tps(test: dict[str, Any]) -> float:
    """The fastest of a test's repetitions (llama-bench's samples_ts), or its average when there are none: on a
    shared machine the slower repetitions measure the neighbours, the fastest one the machine."""
    samples = [float(x) for x in test.get("samples_ts") or []]
    return max(samples) if samples else float(test["avg_ts"])


def cpu_ticks() -> tuple[float, float] | None:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat; None where there is none."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [float(x) for x in first.split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (total - idle) / hz, total / hz


def busy_share(before: tuple[float, float] | None, after: tuple[float, float] | None, own_cpu_s: float) -> float:
    """The share of the machine's CPU time that processes other than our child used between two cpu_ticks()."""
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    others = (after[0] - before[0]) - own_cpu_s
    return min(max(others / (after[1] - before[1]), 0.0), 1.0)


def _gpu_sampler(stop: threading.Event, peaks: dict[str, int]) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML: no GPU peaks, nothing to report
        return
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        base = [int(pynvml.nvmlDeviceGetMemoryInfo(h).used) for h in handles]
        while not stop.is_set():
            for i, h in enumerate(handles):
                used = int(pynvml.nvmlDeviceGetMemoryInfo(h).used) - base[i]
                peaks[f"CUDA{i}"] = max(peaks.get(f"CUDA{i}", 0), used)
            stop.wait(0.2)
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def run(argv: list[str], *, timeout_s: float, gpus: bool = False) -> BenchResult:
    """Run llama-bench (argv must ask for `-o jsonl`); never raises for a failed or timed-out run."""
    peaks: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_gpu_sampler, args=(stop, peaks), daemon=True) if gpus else None
    start = time.monotonic()
    ticks = cpu_ticks()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Dies with runq (SIGKILL or a crash); SIGTERM/SIGHUP to runq are interrupts, so _wait kills it too.
        proc = procs.spawn(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        if sampler:
            sampler.start()
        status, rusage, timed_out = _wait(proc, timeout_s)
        own_cpu_s = rusage.ru_utime + rusage.ru_stime if rusage else 0.0
        busy = busy_share(ticks, cpu_ticks(), own_cpu_s)
        stop.set()
        if sampler:
            sampler.join(timeout=2)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        log = err.read().decode(errors="replace").splitlines()
    seconds = time.monotonic() - start
    tests = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and "avg_ts" in rec:
                tests.append(rec)
    peaks["CPU"] = rusage.ru_maxrss * 1024 if rusage else 0
    error = None
    if timed_out:
        error = f"stopped after {timeout_s:.0f} s (the time budget)"
    elif status != 0:
        error = _failure(status, log)
    return BenchResult(tuple(tests), peaks, seconds, error, tuple(log[-15:]), busy)


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, Any, bool]:
    """Wait for the child with a deadline; kill it on timeout or Ctrl-C. (exit status, rusage, timed out)."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, rusage, False
            if time.monotonic() > deadline:
                _kill(proc)
                _, status, rusage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, rusage, True
            time.sleep(0.05)
    except BaseException:
        _kill(proc)
        with contextlib.suppress(ChildProcessError):
            os.wait4(proc.pid, 0)
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)


def _failure(status: int, log: list[str]) -> str:
    text = "\n".join(log).lower()
    if "out of memory" in text or "failed to allocate" in text or "cudamalloc failed" in text:
        return "out of memory while loading"
    if status < 0:
        return f"killed by signal {-status}"
    last = next((line.strip() for line in reversed(log) if line.strip()), "")
    return f"llama-bench exited with {status}" + (f": {last[:160]}" if last else "")


def binary(bin_dir: Path) -> Path:
    return bin_dir / "llama-bench"


def command(bin_dir: Path) -> list[str]:
    """How to start llama-bench from this build (its binary, or a multi-call `llama bench`)."""
    from launcher.llama.capabilities import tool_argv

    return tool_argv(bin_dir, "llama-bench") or [str(binary(bin_dir))]
