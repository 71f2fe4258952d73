"""llama-server never outlives runq: Ctrl-C, SIGTERM, SIGHUP while loading and while serving, SIGKILL of runq,
runq crashing. Real llama-server processes (the CPU build) on generated models."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.llama.build import Build
from launcher.llama.server import free_port
from launcher.measure.synth import SynthModel, write_model
from tests.helpers import SPEC, RunningRunq, runq_proc, wait_until


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SynthModel:
    return write_model(SPEC.with_(arch="qwen3moe", n_head_kv=2, head_dim=64), tmp_path_factory.mktemp("sig") / "q.gguf")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _kids(pid: int) -> list[psutil.Process]:
    """The model's llama-server (not a `llama-server --help` runq asks before it)."""
    try:
        return [c for c in psutil.Process(pid).children(recursive=True)
                if "llama-server" in c.name() and "-m" in c.cmdline()]  # fmt: skip
    except psutil.NoSuchProcess:
        return []


def _spawned_server(r: RunningRunq, timeout: float = 60) -> psutil.Process:
    """The llama-server runq started, as soon as it exists."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if kids := _kids(r.proc.pid):
            return kids[0]
        assert r.proc.poll() is None, r.proc.communicate()
        time.sleep(0.01)
    raise AssertionError("runq started no llama-server")


def _gone(p: psutil.Process, timeout: float) -> float | None:
    """Seconds until the process is gone (or a zombie nobody reaps yet), None if it is still running."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                return time.monotonic() - t0
        except psutil.NoSuchProcess:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def _start(model: SynthModel, env: dict[str, str], running: list[RunningRunq]) -> tuple[RunningRunq, int]:
    port = free_port()
    r = RunningRunq(["run", str(model.path), "--server", "--port", str(port), "--ctx", "2048"], env)
    running.append(r)
    return r, port


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
@pytest.mark.parametrize("phase", ["loading", "serving"])
def test_llama_server_dies_with_runq(
    sig: signal.Signals, phase: str, model: SynthModel, env: dict[str, str], running: list[RunningRunq]
) -> None:
    """While loading, llama-server is frozen (SIGSTOP: a load that does not react to SIGTERM, like a 250 GB read
    from a slow disk) so the signal surely lands before it is ready; runq must still end it within seconds."""
    r, port = _start(model, env, running)
    server = _spawned_server(r)
    if phase == "loading":
        server.suspend()
    else:
        r.wait_for("Serving.")
    t0 = time.monotonic()
    r.proc.send_signal(sig)
    took = _gone(server, timeout=20)
    assert took is not None, f"llama-server still running {time.monotonic() - t0:.0f} s after {sig.name} to runq"
    code, out, err = r.finish()
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert code == 130, err
    if phase == "loading":
        assert "llama-server is ready" not in out
    wait_until(lambda: port_free("127.0.0.1", port), "the port free again", timeout=30)  # a killed socket: a moment
    print(f"\n{sig.name} to runq while {phase}: llama-server gone {took:.2f} s later")


@pytest.fixture(scope="module")
def frozen_bin(llama_build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build's binaries, except that llama-fit-params (the first one runq asks, before any llama-server)
    freezes itself first: a probe stuck on a slow disk or a hung driver, as a real one can be."""
    d = tmp_path_factory.mktemp("frozen-bin")
    for b in llama_build.bin_dir.iterdir():
        (d / b.name).symlink_to(b)
    fit = d / "llama-fit-params"
    fit.unlink()
    fit.write_text(f'#!/bin/sh\nkill -STOP $$\nexec {llama_build.bin_dir / "llama-fit-params"} "$@"\n')
    fit.chmod(0o755)
    return d


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_probe_frozen_before_the_server_dies_with_runq(
    sig: signal.Signals, model: SynthModel, env: dict[str, str], frozen_bin: Path, running: list[RunningRunq]
) -> None:
    """The short commands runq runs before a server (llama-fit-params, a --help) die with runq too: SIGTERM and
    SIGHUP come before any server is there to trap them, and SIGKILL leaves runq no say at all."""
    port = free_port()
    r = RunningRunq(["run", str(model.path), "--server", "--port", str(port), "--ctx", "2048",
                     "--llama-bin", str(frozen_bin)], env)  # fmt: skip
    running.append(r)

    def frozen() -> psutil.Process | None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for c in psutil.Process(r.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if c.status() == psutil.STATUS_STOPPED:
                        return c
        return None

    wait_until(lambda: frozen() is not None or r.proc.poll() is not None, "a frozen probe", timeout=120)
    probe = frozen()
    assert probe is not None, r.proc.communicate()
    r.proc.send_signal(sig)
    took = _gone(probe, timeout=20)
    with contextlib.suppress(psutil.NoSuchProcess):
        if took is None:
            probe.kill()  # not left behind for the rest of the suite
    assert took is not None, f"the frozen probe still runs 20 s after {sig.name} to runq"
    code, _out, err = r.finish()
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert code == 130, err
    print(f"\n{sig.name} to runq while a probe is frozen: the probe gone {took:.2f} s later")


def test_a_crash_of_runq_stops_its_llama_server(model: SynthModel, env: dict[str, str], llama_build: Build) -> None:
    """An exception nobody catches (a bug in runq) still stops the server, on the way out."""
    port = free_port()
    code = f"""
import sys
from pathlib import Path
from launcher.llama import server as runner
argv = [{str(llama_build.bin_dir / "llama-server")!r}, "-m", {str(model.path)!r}, "--port", "{port}", "-c", "2048"]
s = runner.start(argv, Path({str(model.path.parent / "crash.log")!r}), "127.0.0.1", {port})
runner.wait_healthy(s, 120)
print(s.proc.pid, flush=True)
raise RuntimeError("a bug")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 1 and "RuntimeError: a bug" in r.stderr
    pid = int(r.stdout.split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert port_free("127.0.0.1", port)


def test_port_zero_is_refused(model: SynthModel, env: dict[str, str]) -> None:
    """Port 0 would make llama-server bind a random port that runq then polls forever."""
    r = runq_proc("run", str(model.path), "--server", "--port", "0", env=env, timeout=60)
    assert r.returncode == 2 and "Error: --port 0: must be between 1 and 65,535" in r.stderr
    from launcher.errors import UsageError
    from launcher.llama import server as runner

    with pytest.raises(UsageError):  # any other caller of the runner too
        runner.start([sys.executable], model.path.parent / "x.log", "127.0.0.1", 0)


def test_die_with_parent_is_set_in_the_child(tmp_path: Path) -> None:
    """The parent-death signal as the kernel sees it (/proc/PID/status has no field for it: ask prctl)."""
    from launcher.llama import procs

    probe = "import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)"
    p = procs.spawn([sys.executable, "-c", probe], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    assert int(out) == signal.SIGKILL


def test_a_stopped_build_step_takes_its_whole_process_group(tmp_path: Path) -> None:
    """A build step (cmake → make → compilers) stopped by Ctrl-C or the TUI's cancel: the grandchildren go too."""
    from launcher.llama.build import _stream

    seen: list[psutil.Process] = []

    def stop_now() -> bool:
        for _ in range(100):  # both background sleeps have started (exec'd), then stop
            seen[:] = []
            for kid in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if kid.name() == "sleep" and kid.status() != psutil.STATUS_ZOMBIE:
                        seen.append(kid)
            if len(seen) == 2:
                break
            time.sleep(0.02)
        return True

    step = ["sh", "-c", "sleep 60 & sleep 61 & echo started; wait"]
    with (tmp_path / "build.log").open("w") as log, pytest.raises(KeyboardInterrupt):
        _stream(step, log, lambda pct, what: None, "compile", stop_now)
    assert len(seen) == 2
    assert all(_gone(p, timeout=10) is not None for p in seen)
