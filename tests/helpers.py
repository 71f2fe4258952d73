"""What more than one test module uses: the two ways to run runq (in this process and as a process of its own),
runq processes that keep running (servers) with the signal dispositions a terminal gives, generated-model specs,
described machines, the tiny Hub profile, and systemd's checks of unit files.

No fixtures (tests/conftest.py, tests/edge/conftest.py) and no tests here. Test modules import from here and from
tests/support, never from each other (tests/unit/test_test_layout.py checks it).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher.llama.build import Build
from launcher.machine.spec import CPU, GPU, Machine, MachineSpec
from launcher.measure.synth import SynthSpec
from launcher.units import GiB

# --- the test cache ---------------------------------------------------------------------------------------------


def own_cache(d: Path, build: Build) -> Path:
    """A runq cache of its own in `d` (calibrations, logs, header caches) that sees the shared llama.cpp build and
    the generated calibration models, which are written once per machine."""
    (d / "builds").mkdir(parents=True)
    (d / "builds" / build.key).symlink_to(build.path)
    shared_models = build.path.parent.parent / "calibration" / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    (d / "calibration").mkdir()
    (d / "calibration" / "models").symlink_to(shared_models)
    return d


_SESSION_CACHES: dict[str, Path] = {}


def session_cache(build: Build) -> Path:
    """The cache this test session's runq processes share (RUNQ_CACHE_DIR): the llama.cpp build is borrowed from
    the developer's cache, but what runq writes (a calibration, logs) never lands there."""
    if build.key not in _SESSION_CACHES:
        # Not under /tmp, like a user's cache: a unit's PrivateTmp= would hide it (and tests check what binds).
        base = Path.home() / ".cache" / "runq-test"
        base.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix="session-", dir=base))
        atexit.register(shutil.rmtree, d, True)  # symlinks are removed, not followed
        _SESSION_CACHES[build.key] = own_cache(d / "cache", build)
    return _SESSION_CACHES[build.key]


# --- running runq ----------------------------------------------------------------------------------------------

RUNQ_CMD = [sys.executable, "-m", "launcher"]
SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def runq_main(*argv: str) -> tuple[int, str, str]:
    """`runq ARGV` in this process, through main() and its error boundary: (exit code, stdout, stderr)."""
    from launcher.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def default_signals() -> None:
    """Run in the child before exec: SIGINT, SIGTERM and SIGHUP at their defaults and unblocked. A test runner
    started under `nohup` ignores SIGHUP, one started in the background ignores SIGINT, and a child inherits that;
    runq rightly keeps an ignored disposition, so a test that signals runq gives it what a terminal would."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def runq_proc(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 300, **run: Any
) -> subprocess.CompletedProcess[str]:
    """`python -m launcher ARGV` to its end, in `env` (default: this process's environment, which the fixtures set
    up: RUNQ_HOME, the Hugging Face cache); `run` goes to subprocess.run (e.g. stdin=)."""
    return subprocess.run(
        [*RUNQ_CMD, *argv], capture_output=True, text=True, env=dict(os.environ) if env is None else env,
        timeout=timeout, preexec_fn=default_signals, **run,
    )  # fmt: skip


def spawn(argv: list[str], env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
    """A process the test reads (by default stdout and stderr piped, as text) and may signal: default dispositions."""
    kw: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(argv, env=dict(os.environ) if env is None else env, preexec_fn=default_signals, **kw)


class RunningRunq:
    """`runq ARGV` running in the background (a server, a worker); its stdout read line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = spawn([*RUNQ_CMD, *argv], env)
        self.out: list[str] = []

    def wait_for(self, text: str, timeout: float = 120) -> None:
        t0 = time.monotonic()
        assert self.proc.stdout is not None
        while time.monotonic() - t0 < timeout:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.out.append(line)
            if text in line:
                return
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
        raise AssertionError(f"{text!r} not seen; stdout: {''.join(self.out)} stderr: {err}")

    def llama_server(self) -> psutil.Process:
        kids = [c for c in psutil.Process(self.proc.pid).children(recursive=True) if "llama-server" in c.name()]
        assert len(kids) == 1
        return kids[0]

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.out) + out, err


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    """POST JSON. Random weights now and then end a reply inside a multi-byte character, which llama-server
    answers with HTTP 500 ("invalid UTF-8 byte"): such a request is sent again with another seed."""
    for seed in (11, 12, 13):
        data = json.dumps({**body, "seed": seed} if "messages" in body else body).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 500 or b"UTF-8" not in e.read() or seed == 13:
                raise
    raise AssertionError("unreachable")


def wait_until(done: Callable[[], object], what: str, timeout: float = 120, every: float = 0.05) -> float:
    """Poll `done()` until it is true; seconds it took. The timeout only bounds a hang (a loaded machine is slow,
    never wrong)."""
    t0 = time.monotonic()
    while not done():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return time.monotonic() - t0


# --- generated models and described machines ----------------------------------------------------------------

# The run tests' model: small enough for 2 shared cores, 16 experts so half of them is a real split.
SPEC = SynthSpec(arch="deepseek2", n_layer=6, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16)
# The Hub tests' model (three shards of UD-Q8_0 and one F16 file in the local Hub).
TINY = SynthSpec(arch="deepseek2", n_layer=5, n_embd=256, n_ff=256, n_ff_exp=256, n_expert=8)
# Mid-sized shapes for comparing with llama.cpp's own projection: big enough that buffers are not rounding.
SHAPE = {"n_layer": 6, "n_embd": 512, "n_ff": 1024, "n_ff_exp": 256, "n_expert": 16, "n_expert_used": 4, "n_head": 8}


# The RPC tests' model (8 layers: room to split across this host and two workers) and its context.
RPC_SPEC = SynthSpec(arch="deepseek2", n_layer=8, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16)
RPC_CTX = 4096


def ram_for_one_expert_layer(path: Path, ctx: int = RPC_CTX, ubatch: int = 512) -> str:
    """A RAM size that holds this host's part (every non-expert weight, KV, compute, 1 GiB prompt cache, the
    4 GiB margin) and about one expert layer: the rest has to go to the workers."""
    from launcher.model.shards import open_local
    from launcher.plan import kv_cache, memory

    m = open_local(path)
    t, hp = m.tensors, m.hparams
    fixed = (
        t.non_expert_bytes()
        + kv_cache.kv_layout(hp).bytes_for(ctx)
        + memory.cpu_only_compute_bytes(hp, ctx, ubatch)
        + memory.SERVER_CACHE_RAM_MIN_BYTES
    )
    layer = max(t.expert_bytes(il) for il in t.expert_layers)
    return f"{memory.RAM_MARGIN_MIN_BYTES + fixed + layer * 3 // 2}B"


def half_the_experts_gpu(path: Path, ctx: int = 4096, ubatch: int = 512) -> str:
    """A GPU size (in bytes) with room for the non-expert weights and about half the expert layers (the demo's)."""
    from launcher.model.shards import open_local
    from launcher.plan.choose import gpu_for_half_the_experts

    m = open_local(path)
    return f"{gpu_for_half_the_experts(m.tensors, m.hparams, ctx, ubatch)}B"


def serve_verified(
    path: Path, env: dict[str, str], running: list[RunningRunq]
) -> tuple[RunningRunq, int, str, dict[str, object]]:
    """`runq run --server --verify-tensors` on a pretend GPU that holds about half the experts; once it serves,
    runq's override check must have passed, and one chat request is answered. Returns the running runq, its
    port, runq's output and the answer."""
    from launcher.llama.server import free_port

    port = free_port()
    gpu = half_the_experts_gpu(path)
    argv = ["run", str(path), "--server", "--port", str(port), "--verify-tensors", "--gpu", gpu, "--ram", "16GiB"]
    r = RunningRunq([*argv, "--ctx", "4096", "--ubatch", "512"], env)
    running.append(r)
    r.wait_for("Serving.")
    out = "".join(r.out)
    assert "override lines: exactly the" in out and "planned tensors were moved" in out
    answer = post(f"http://127.0.0.1:{port}/v1/chat/completions",
                  {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})  # fmt: skip
    return r, port, out, answer


def machine(*gpus_gib: float, ram_gib: float, cores: int = 16) -> Machine:
    """A described machine: RTX 4090-named GPUs of these sizes, this much RAM, these cores."""
    return MachineSpec.model_validate(
        {"gpus": [{"memory": f"{g}GiB", "name": "RTX 4090"} for g in gpus_gib], "ram": f"{ram_gib}GiB", "cores": cores}
    ).to_machine()


def machine_with_ram(ram: int, gpus: tuple[GPU, ...] = ()) -> Machine:
    return Machine(gpus=gpus, ram_total_bytes=ram, ram_available_bytes=ram, cpu=CPU(physical_cores=2, logical_cores=2))


def gpu_for(extra_bytes: int) -> Machine:
    """One GPU with exactly `extra_bytes` beyond runq's fixed margins."""
    from launcher.plan import memory as mem

    cap = mem.CUDA_CONTEXT_BYTES + mem.GPU_MARGIN_BYTES + extra_bytes
    return Machine(gpus=(GPU(0, "test GPU", cap, cap),), ram_total_bytes=64 * GiB, ram_available_bytes=64 * GiB,
                   cpu=CPU(physical_cores=8, logical_cores=8))  # fmt: skip


# --- the Hub -------------------------------------------------------------------------------------------------


def tiny_profile_toml(repo: str, sizes: dict[str, int]) -> str:
    """A catalog profile for TINY in `repo`: F16 in one file, UD-Q8_0 in three shards."""
    s = TINY
    return f"""
name = "tiny"
display_name = "Tiny"
repo = "{repo}"
default_ctx = 2048
[arch]
name = "deepseek2"
n_layer = {s.n_layer}
n_embd = {s.n_embd}
n_vocab = 382
context_length = {s.n_ctx_train}
n_head = {s.n_head}
n_head_kv = 1
key_length = {s.kv_lora_rank + s.qk_rope_dim}
value_length = {s.kv_lora_rank}
key_length_mla = {s.qk_nope_dim + s.qk_rope_dim}
value_length_mla = {s.v_head_dim}
q_lora_rank = {s.q_lora_rank}
kv_lora_rank = {s.kv_lora_rank}
rope_dim = {s.qk_rope_dim}
n_ff = {s.n_ff}
n_ff_exp = {s.n_ff_exp}
n_expert = {s.n_expert}
n_expert_used = {s.n_expert_used}
n_expert_shared = 1
n_dense_lead = {s.n_dense_lead}
[[quants]]
name = "F16"
path = "Tiny-F16.gguf"
size_bytes = {sizes["F16"]}
[[quants]]
name = "UD-Q8_0"
path = "UD-Q8_0/Tiny-UD-Q8_0-00001-of-00003.gguf"
size_bytes = {sizes["UD-Q8_0"]}
"""


def write_tiny_profile(repo: str, tiny_repo: dict[str, list[Path]], name: str = "tiny") -> None:
    """The tiny profile as the user's own (RUNQ_HOME's config/profiles), sized from the repo's files."""
    sizes = {q: sum(p.stat().st_size for p in ps) for q, ps in tiny_repo.items()}
    d = Path(os.environ["RUNQ_HOME"]) / "config" / "profiles"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.toml").write_text(tiny_profile_toml(repo, sizes).replace('name = "tiny"', f'name = "{name}"', 1))


# --- systemd ---------------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).resolve().parent / "support" / "golden"
FAKE_SYSTEMCTL = Path(__file__).resolve().parent / "support" / "fake_systemctl.py"
GOLDEN_RUNQ = ["/opt/runq/.venv/bin/python3", "-m", "launcher"]  # runq's own command in the golden units
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def fake_systemd_env(build: Build, tmp_path: Path) -> dict[str, str]:
    """This environment with the fake systemctl (tests/support/fake_systemctl.py), units and state under tmp_path,
    and the shared llama.cpp build."""
    return {
        **os.environ,
        "RUNQ_CACHE_DIR": str(session_cache(build)),
        "RUNQ_SYSTEMCTL": str(FAKE_SYSTEMCTL),
        "RUNQ_JOURNALCTL": "/bin/echo",
        "RUNQ_UNIT_DIR": str(tmp_path / "units"),
        "RUNQ_STATE_DIR": str(tmp_path / "state"),
        "FAKE_SYSTEMD_DIR": str(tmp_path / "fake-systemd"),
    }


def calls(env: dict[str, str]) -> list[list[str]]:
    """Every systemctl call the fake recorded, in order."""
    p = Path(env["FAKE_SYSTEMD_DIR"]) / "calls.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def check_unit(unit: Path, mode: str, tmp_path: Path) -> None:
    """systemd's own checks of a unit file: `verify` without complaints, and an exposure level of at most 6.9
    ("MEDIUM" or better) in `security --offline=yes`."""
    scope = ["--user"] if mode == "user" else []
    runtime = tmp_path / "runtime"  # a user manager needs a runtime directory, even to verify files
    runtime.mkdir(mode=0o700, exist_ok=True)
    r = subprocess.run(["systemd-analyze", *scope, "verify", str(unit)], capture_output=True, text=True,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unknown" not in r.stderr and "ignoring" not in r.stderr.lower(), r.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", s.stdout + s.stderr)
    assert m, s.stdout + s.stderr
    assert float(m.group(1)) <= 6.9, s.stdout[-3000:]
