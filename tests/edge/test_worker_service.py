"""`runq service install-worker`: golden worker units, systemd's own checks, install with a stand-in systemctl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.llama.build import Build
from launcher.llama.rpc import worker_argv
from launcher.llama.server import free_port
from launcher.service.unit import render, worker_unit_spec
from tests.edge.test_service import FAKE_SYSTEMCTL, GOLDEN, RUNQ, calls, check_unit

COMBOS = [("user", False), ("system", True)]


def spec_for(mode: str, gpu: bool, binary: str = "", runq: list[str] | None = None):  # type: ignore[no-untyped-def]
    binary = binary or f"/opt/runq/cache/builds/0c1e57098b-{'cuda-sm89' if gpu else 'cpu'}-0a1b2c3d/bin/ggml-rpc-server"
    devices = ["CUDA0", "CUDA1", "CPU"] if gpu else []
    argv = worker_argv(Path(binary), "10.0.0.2" if gpu else "127.0.0.1", 50052, 16, gpu, devices)
    return worker_unit_spec("worker-50052", argv, mode, "llama" if mode == "system" else None, 2 if gpu else 0,
                            runq or RUNQ)  # fmt: skip


@pytest.mark.parametrize(("mode", "gpu"), COMBOS)
def test_golden_worker_units(mode: str, gpu: bool) -> None:
    text = render(spec_for(mode, gpu))
    path = GOLDEN / f"worker-{mode}-{'gpu' if gpu else 'cpu'}.service"
    if os.environ.get("RUNQ_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert "ExecStartPost" not in text and "NoNewPrivileges=yes" in text and "LLAMA_CACHE=%S/runq/worker-50052" in text
    assert ("DeviceAllow=/dev/nvidia1 rw" in text) == gpu and ("service wait-gpu" in text) == gpu


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize(("mode", "gpu"), COMBOS)
def test_worker_units_pass_systemd_checks(mode: str, gpu: bool, llama_build: Build, tmp_path: Path) -> None:
    spec = spec_for(mode, gpu, str(llama_build.binary("ggml-rpc-server")), [sys.executable, "-m", "launcher"])
    unit = tmp_path / f"runq-worker-{mode}.service"
    unit.write_text(render(spec).replace("User=llama", "User=daemon"))
    check_unit(unit, mode, tmp_path)


def test_install_worker_starts_it_and_remove_stops_it(llama_build: Build, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RUNQ_CACHE_DIR": str(llama_build.path.parent.parent),
        "RUNQ_SYSTEMCTL": str(FAKE_SYSTEMCTL),
        "RUNQ_UNIT_DIR": str(tmp_path / "units"),
        "RUNQ_STATE_DIR": str(tmp_path / "state"),
        "FAKE_SYSTEMD_DIR": str(tmp_path / "fake-systemd"),
    }
    port = free_port()

    def runq(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "launcher", *argv], capture_output=True, text=True, env=env,
                              timeout=120)  # fmt: skip

    r = runq("service", "install-worker", "--port", str(port), "--dry-run")
    assert r.returncode == 0 and "ggml-rpc-server" in r.stdout and not (tmp_path / "units").exists()
    r = runq("service", "install-worker", "--port", str(port), "--yes", "--threads", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"--rpc 127.0.0.1:{port}" in r.stdout
    unit = tmp_path / "units" / f"runq-worker-{port}.service"
    assert unit.is_file()
    assert calls(env)[-1] == ["--user", "enable", "--now", f"runq-worker-{port}.service"]
    # The fake systemctl really started ExecStart: llama.cpp lists the worker's device through --rpc.
    server = Path(json.loads((Path(env["RUNQ_HOME"]) / "config" / "services" / f"worker-{port}.json").read_text())
                  ["argv"][0]).parent / "llama-server"  # fmt: skip
    import time

    for _ in range(100):
        listed = subprocess.run([str(server), "--rpc", f"127.0.0.1:{port}", "--list-devices"], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        if "RPC0:" in listed.stdout:
            break
        time.sleep(0.1)
    assert f"RPC0: 127.0.0.1:{port}" in listed.stdout
    r = runq("service", "status", f"worker-{port}")
    assert r.returncode == 0 and "ggml-rpc-server on 127.0.0.1" in r.stdout, r.stderr
    r = runq("service", "remove", f"worker-{port}")
    assert r.returncode == 0 and not unit.exists(), r.stderr
