"""Several hosts through llama.cpp's RPC backend, with real processes: `runq worker` (ggml-rpc-server) on
loopback ports, a generated model planned across them and this host, llama-server serving it."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.llama.build import Build
from launcher.llama.rpc import default_devices, exposure_warning, parse_list_devices, worker_argv
from launcher.llama.server import free_port
from launcher.measure.synth import SynthModel, write_model
from launcher.units import GiB
from tests.helpers import RPC_CTX, RPC_SPEC, RUNQ_CMD, RunningRunq, post, ram_for_one_expert_layer, runq_proc, spawn


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SynthModel:
    return write_model(RPC_SPEC, tmp_path_factory.mktemp("rpc") / "DeepSeek-V3.1-UD-TQ1_0.gguf")


class Worker:
    def __init__(self, port: int, env: dict[str, str], *extra: str) -> None:
        self.port = port
        self.proc = spawn([*RUNQ_CMD, "worker", "--port", str(port), "--threads", "1", *extra], env)
        self.out: list[str] = []

    def wait_ready(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.out.append(line)
            if line.startswith("Serving."):
                return "".join(self.out)
        raise AssertionError(f"worker on {self.port} not ready: {''.join(self.out)} {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def rpc_server(self) -> psutil.Process:
        kids = [c for c in psutil.Process(self.proc.pid).children() if "rpc-server" in c.name()]
        assert len(kids) == 1
        return kids[0]


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
            try:
                w.proc.wait(15)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


def test_worker_pieces() -> None:
    assert worker_argv(Path("/b/ggml-rpc-server"), "127.0.0.1", 50052, 8, True, ["CUDA0", "CPU"]) == [
        "/b/ggml-rpc-server", "--host", "127.0.0.1", "--port", "50052", "--threads", "8", "--cache",
        "--device", "CUDA0,CPU",
    ]  # fmt: skip
    assert default_devices(2, "cuda") == ["CUDA0", "CUDA1", "CPU"] and default_devices(0, "cpu") == []
    text = exposure_warning("10.0.0.2", 50052)
    assert "no authentication" in text and "ufw allow from MAIN_HOST_IP" in text and "ssh -N -L" in text
    listed = (
        "Available devices:\n  RPC0: 127.0.0.1:50052 (24016 MiB, 23000 MiB free)\n"
        "  RPC1: 10.0.0.2:1 (8 MiB, 7 MiB free)\n"
    )
    assert parse_list_devices(listed) == [(0, 24016 << 20, 23000 << 20), (1, 8 << 20, 7 << 20)]


def test_two_workers_serve_a_model_planned_across_them(
    model: SynthModel, env: dict[str, str], workers: list[Worker], tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    for p in ports:
        workers.append(Worker(p, env))
    for w in workers:
        out = w.wait_ready()
        assert f"listening on 127.0.0.1:{w.port}" in out and "GiB free of" in out and "CPU" in out
    rpc = ",".join(f"127.0.0.1:{p}" for p in ports)
    port = free_port()
    ram = ram_for_one_expert_layer(model.path)
    argv = ["run", str(model.path), "--server", "--port", str(port), "--verify-tensors", "--gpu", "none",
            "--ram", ram, "--rpc", rpc, "--ctx", str(RPC_CTX), "--ubatch", "512"]  # fmt: skip
    r = RunningRunq(argv, env)
    try:
        r.wait_for("Serving.", timeout=180)
        out = "".join(r.out)
        names = [f"RPC0[127.0.0.1:{p}]" for p in ports]
        for n in names:  # the plan put experts on both workers …
            assert f"on {n}" in out
        assert "experts of layers" in out and "on the CPU" in out  # … and on this host
        # llama.cpp's own override lines matched the plan, tensor by tensor (--verify-tensors), and its memory
        # breakdown shows both workers' buffers.
        assert "override lines: exactly the" in out
        log = Path(next(line.split("Log: ", 1)[1].strip() for line in r.proc.stderr if "Log: " in line))  # type: ignore[union-attr]
        text = log.read_text(errors="replace")
        for n in names:
            assert f"buffer type overridden to {n}" in text
            assert f"{n} model buffer size" in text
        answer = post(f"http://127.0.0.1:{port}/v1/chat/completions",
                      {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})  # fmt: skip
        assert answer["choices"][0]["message"]["role"] == "assistant"  # type: ignore[index]
        # A worker dying while serving: llama-server's failure is reported with the worker's address.
        server = workers[1].rpc_server()
        workers[1].proc.send_signal(signal.SIGTERM)
        workers[1].proc.wait(15)
        assert not server.is_running()
        with contextlib.suppress(OSError):
            post(f"http://127.0.0.1:{port}/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "Again"}], "max_tokens": 8})  # fmt: skip
        code, _, err = r.finish(timeout=60)
        assert code != 0 and f"127.0.0.1:{ports[1]}" in err, err
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def test_one_worker_verified_like_with_like_and_quiet(
    model: SynthModel, env: dict[str, str], workers: list[Worker]
) -> None:
    """The issue-20 workflow: `runq worker` on loopback, `runq run FILE --server --rpc … --verify-tensors`. The
    CPU's weights are compared with the file range llama.cpp maps (the worker's experts lie inside it), the worker's
    compute is runq's reserve, not a prediction: no row asks to "please report". The worker shows that a client
    connected once, not each of the dozens of connections a plan and a run make."""
    w = Worker(free_port(), env)
    workers.append(w)
    w.wait_ready()
    port = free_port()
    ram = ram_for_one_expert_layer(model.path)
    argv = ["run", str(model.path), "--server", "--port", str(port), "--verify-tensors", "--gpu", "none",
            "--ram", ram, "--rpc", f"127.0.0.1:{w.port}", "--ctx", str(RPC_CTX)]  # fmt: skip
    r = RunningRunq(argv, env)
    try:
        r.wait_for("Serving.", timeout=180)
    finally:
        r.proc.send_signal(signal.SIGINT)
    code, out, err = r.finish(timeout=60)
    print("\n" + out)
    assert code == 130, err
    assert "please report" not in out + err and "override lines: exactly the" in out
    rows = {tuple(line.split()[:2]): line for line in out.splitlines() if re.match(r"\s+(CPU|RPC0)", line)}
    name = f"RPC0[127.0.0.1:{w.port}]"
    assert re.search(r"256 MiB\s+\S+ \S+\s+reserve\s+runq's reserve for a worker", rows[(name, "compute")])
    cpu = re.search(r"\s([-+][\d.]+)%\s+GGUF header: the file range", rows[("CPU", "weights")])
    assert cpu and abs(float(cpu.group(1))) < 10, rows[("CPU", "weights")]
    w.proc.send_signal(signal.SIGINT)
    rest, worker_err = w.proc.communicate(timeout=30)
    shown = "".join(w.out) + rest
    assert "Accepted client connection" not in shown and "Client connection closed" not in shown
    assert shown.count("A client connected") == 1 and "client connection(s) served" in worker_err


def test_worker_stops_cleanly_and_takes_its_server_along(env: dict[str, str], workers: list[Worker]) -> None:
    w = Worker(free_port(), env)
    workers.append(w)
    w.wait_ready()
    server = w.rpc_server()
    w.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert w.proc.wait(15) == 130
    assert not server.is_running()
    # systemd stops a worker service with SIGTERM: a clean stop (exit 0); a closed terminal sends SIGHUP.
    for sig, code in ((signal.SIGTERM, 0), (signal.SIGHUP, 130)):
        w1 = Worker(free_port(), env)
        workers.append(w1)
        w1.wait_ready()
        server = w1.rpc_server()
        w1.proc.send_signal(sig)
        assert w1.proc.wait(15) == code, sig
        assert not server.is_running()
    w2 = Worker(free_port(), env)
    workers.append(w2)
    w2.wait_ready()
    server = w2.rpc_server()
    w2.proc.kill()  # runq killed outright: PR_SET_PDEATHSIG takes the server down too
    w2.proc.wait()
    psutil.wait_procs([server], timeout=10)
    assert not server.is_running()


def test_unreachable_worker_is_named_and_left_out(model: SynthModel, env: dict[str, str]) -> None:
    dead = free_port()
    r = runq_proc("plan", str(model.path), "--gpu", "none", "--ram", "64GiB", "--rpc", f"127.0.0.1:{dead}",
                  env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"Warning: worker 127.0.0.1:{dead} is unreachable" in r.stderr and "planning without it" in r.stderr
    assert "Error:" not in r.stderr  # runq goes on: it is not an error
    assert f"note: planned without worker 127.0.0.1:{dead}: it is unreachable" in r.stdout  # the plan says it too
    assert "--rpc" not in r.stdout


def test_plan_uses_what_the_worker_really_has(model: SynthModel, env: dict[str, str], workers: list[Worker]) -> None:
    w = Worker(free_port(), env)
    workers.append(w)
    w.wait_ready()
    r = runq_proc("plan", str(model.path), "--gpu", "none", "--json", "--ram", ram_for_one_expert_layer(model.path),
                  "--rpc", f"127.0.0.1:{w.port}", "--ctx", str(RPC_CTX), env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    dev = next(d for d in p["devices"] if d["remote"])
    assert dev["name"] == f"RPC0[127.0.0.1:{w.port}]"
    assert 0 < dev["capacity_bytes"] <= psutil.virtual_memory().total + GiB  # the worker's own figure
    assert p["rpc"] == [f"127.0.0.1:{w.port}"] and p["argv"][p["argv"].index("--rpc") + 1] == f"127.0.0.1:{w.port}"


def test_service_waits_for_its_workers_and_names_a_short_one(
    model: SynthModel, env: dict[str, str], workers: list[Worker], llama_build: Build
) -> None:
    w = Worker(free_port(), env)
    workers.append(w)
    w.wait_ready()
    ep = f"127.0.0.1:{w.port}"
    # A service planned across this host and the worker waits for the worker before llama-server starts.
    r = runq_proc("service", "render", str(model.path), "--gpu", "none", "--ram", ram_for_one_expert_layer(model.path),
                  "--rpc", ep, "--ctx", str(RPC_CTX), env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    pre = next(x for x in r.stdout.splitlines() if "wait-workers" in x)
    assert f"--need {ep}/0:" in pre
    start = next(x for x in r.stdout.splitlines() if x.startswith("ExecStart="))
    assert f"--rpc {ep}" in start and f"=RPC0[{ep}]" in start

    def wait(*need: str) -> subprocess.CompletedProcess[str]:
        argv = ["service", "wait-workers", *[f"--need={n}" for n in need], "--llama-bin", str(llama_build.bin_dir),
                "--timeout", "1"]  # fmt: skip
        return runq_proc(*argv, env=env, timeout=60)

    ok = wait(f"{ep}/0:{GiB}")
    assert ok.returncode == 0 and "workers ready" in ok.stdout, ok.stderr
    short = wait(f"{ep}/0:{1 << 50}")
    assert short.returncode == 1 and f"worker {ep} device 0 has" in short.stderr and "--force" in short.stderr
    gone = wait(f"127.0.0.1:{free_port()}/0:1")
    assert gone.returncode == 1 and "is unreachable" in gone.stderr


def test_run_killed_outright_takes_llama_server_along(model: SynthModel, env: dict[str, str]) -> None:
    r = RunningRunq(["run", str(model.path), "--server", "--port", str(free_port()), "--gpu", "none",
                     "--ram", "16GiB", "--ctx", str(RPC_CTX)], env)  # fmt: skip
    try:
        r.wait_for("Serving.", timeout=120)
        server = r.llama_server()
    finally:
        r.proc.kill()  # SIGKILL: runq cannot stop it in order; PR_SET_PDEATHSIG does
        r.proc.wait()
    psutil.wait_procs([server], timeout=10)
    assert not server.is_running()


def test_a_description_adds_what_llama_cpp_cannot_tell(env: dict[str, str], workers: list[Worker]) -> None:
    w = Worker(free_port(), env)
    workers.append(w)
    w.wait_ready()
    ep = f"127.0.0.1:{w.port}"

    r = runq_proc("hw", "--json", "--rpc", ep, "--worker", f"at={ep},ram=1GiB,net=10Gbit", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    (worker,) = json.loads(r.stdout)["workers"]
    assert worker["endpoint"] == ep and not worker["described"] and worker["net_bytes_s"] == 1.25e9
    assert worker["devices"][0]["free_bytes"] > 2 * GiB  # what the worker reported, not the description's 1 GiB
    r = runq_proc("hw", "--rpc", ep, env=env, timeout=60)
    assert re.search(rf"Worker\s+{re.escape(ep)}: RPC0 CPU\+RAM \S+ GiB free", r.stdout), r.stdout
    r = runq_proc("hw", "--rpc", ep, "--worker", f"at={ep},gpu=24GiB,ram=64GiB", env=env, timeout=60)
    assert r.returncode == 2 and "describes 2 devices, the worker lends 1" in r.stderr
