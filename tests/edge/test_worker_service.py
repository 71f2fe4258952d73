"""`runq service install-worker`: golden worker units, systemd's own checks, install with a stand-in systemctl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.llama.build import Build
from launcher.llama.rpc import worker_argv
from launcher.llama.server import free_port
from launcher.service.unit import render, worker_unit_spec
from tests.helpers import (
    GOLDEN,
    GOLDEN_RUNQ,
    calls,
    check_unit,
    fake_systemd_env,
    needs_systemd_analyze,
    runq_proc,
    wait_until,
)

COMBOS = [("user", False), ("system", True)]


def spec_for(mode: str, gpu: bool, binary: str = "", runq: list[str] | None = None):  # type: ignore[no-untyped-def]
    binary = binary or f"/opt/runq/cache/builds/0c1e57098b-{'cuda-sm89' if gpu else 'cpu'}-0a1b2c3d/bin/ggml-rpc-server"
    devices = ["CUDA0", "CUDA1", "CPU"] if gpu else []
    argv = worker_argv(Path(binary), "10.0.0.2" if gpu else "127.0.0.1", 50052, 16, gpu, devices)
    return worker_unit_spec("worker-50052", argv, mode, "llama" if mode == "system" else None, 2 if gpu else 0,
                            runq or GOLDEN_RUNQ)  # fmt: skip


@pytest.mark.parametrize(("mode", "gpu"), COMBOS)
def test_golden_worker_units(mode: str, gpu: bool) -> None:
    text = render(spec_for(mode, gpu))
    path = GOLDEN / f"worker-{mode}-{'gpu' if gpu else 'cpu'}.service"
    if os.environ.get("RUNQ_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert "ExecStartPost" not in text and "NoNewPrivileges=yes" in text and "LLAMA_CACHE=%S/runq/worker-50052" in text
    assert ("DeviceAllow=/dev/nvidia1 rw" in text) == gpu and ("service wait-gpu" in text) == gpu


@needs_systemd_analyze
@pytest.mark.parametrize(("mode", "gpu"), COMBOS)
def test_worker_units_pass_systemd_checks(mode: str, gpu: bool, llama_build: Build, tmp_path: Path) -> None:
    spec = spec_for(mode, gpu, str(llama_build.binary("ggml-rpc-server")), [sys.executable, "-m", "launcher"])
    unit = tmp_path / f"runq-worker-{mode}.service"
    unit.write_text(render(spec).replace("User=llama", "User=daemon"))
    check_unit(unit, mode, tmp_path)


def test_install_worker_starts_it_and_remove_stops_it(llama_build: Build, tmp_path: Path) -> None:
    env = fake_systemd_env(llama_build, tmp_path)
    port = free_port()

    r = runq_proc("service", "install-worker", "--port", str(port), "--dry-run", env=env, timeout=120)
    assert r.returncode == 0 and "ggml-rpc-server" in r.stdout and not (tmp_path / "units").exists()
    r = runq_proc("service", "install-worker", "--port", str(port), "--yes", "--threads", "1", env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"--rpc 127.0.0.1:{port}" in r.stdout
    unit = tmp_path / "units" / f"runq-worker-{port}.service"
    assert unit.is_file()
    assert calls(env)[-1] == ["--user", "enable", "--now", f"runq-worker-{port}.service"]
    # The fake systemctl really started ExecStart: llama.cpp lists the worker's device through --rpc.
    server = Path(json.loads((Path(env["RUNQ_HOME"]) / "config" / "services" / f"worker-{port}.json").read_text())
                  ["argv"][0]).parent / "llama-server"  # fmt: skip

    def listed() -> str:
        return subprocess.run([str(server), "--rpc", f"127.0.0.1:{port}", "--list-devices"], capture_output=True,
                              text=True, timeout=30).stdout  # fmt: skip

    wait_until(lambda: "RPC0:" in listed(), "the worker's device listed through --rpc", every=0.1)
    assert f"RPC0: 127.0.0.1:{port}" in listed()
    r = runq_proc("service", "status", f"worker-{port}", env=env, timeout=120)
    assert r.returncode == 0 and "ggml-rpc-server on 127.0.0.1" in r.stdout, r.stderr
    r = runq_proc("service", "remove", f"worker-{port}", env=env, timeout=120)
    assert r.returncode == 0 and not unit.exists(), r.stderr
