"""runq's placement is never behind llama.cpp's own fit (pipeline/fit_check.py), with real llama-fit-params.

No GPU here: a loopback `ggml-rpc-server` is the device. It reports the host's physical RAM as its memory, so a tiny
LD_PRELOAD shim (compiled here) makes `sysconf(_SC_PHYS_PAGES)` say FAKE_PHYS_MIB: to llama.cpp and to runq (which
asks the worker through llama.cpp) it is a device with exactly that much free. llama.cpp's fit keeps -fitt 1024 MiB
on it; runq keeps the same (an asked worker's GPU reports its memory after its own context). The worker is described
as a GPU (`--worker at=…,gpu=…`), so runq plans it as one: layers, KV and compute there, experts while they fit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.llama.build import Build
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.plan.fit_compare import expert_bytes, fit_placement, parse_fit_line
from launcher.plan.projection import parse_fit_print
from launcher.units import MiB
from tests.helpers import runq_main

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
long sysconf(int name) {
    static long (*real)(int) = 0;
    if (!real) real = (long (*)(int)) dlsym(RTLD_NEXT, "sysconf");
    if (name == _SC_PHYS_PAGES) {
        const char *m = getenv("FAKE_PHYS_MIB");
        if (m) return (long) (atoll(m) * 1024 * 1024 / real(_SC_PAGE_SIZE));
    }
    return real(name);
}
"""
SHAPE = {"n_layer": 8, "n_embd": 512, "n_ff": 1024, "n_ff_exp": 512, "n_expert": 16, "n_expert_used": 4, "n_head": 8}
# Budgets (FAKE_PHYS_MIB - 1024): 66-106 MiB against ~100 MiB of weights, 13 MiB of experts per layer.
DEVICE_MIB = (1090, 1110, 1130)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the sysconf shim")
    d = tmp_path_factory.mktemp("shim")
    (d / "physmem.c").write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(d / "physmem.so"), str(d / "physmem.c"), "-ldl"],
                   check=True)  # fmt: skip
    return d / "physmem.so"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    d = tmp_path_factory.mktemp("fitcheck")
    qw = SynthSpec(arch="qwen3moe", n_head_kv=2, head_dim=64).with_(**SHAPE)
    ds = SynthSpec(arch="deepseek2", q_lora_rank=128, kv_lora_rank=128, qk_nope_dim=64, qk_rope_dim=32,
                   v_head_dim=64).with_(**SHAPE)  # fmt: skip
    return {"qwen3moe": write_model(qw, d / "qw.gguf"), "deepseek2": write_model(ds, d / "ds.gguf")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def device(llama_build: Build, shim: Path) -> Iterator[tuple[str, int]]:
    """A loopback RPC device of the size the test asks for; (endpoint, MiB) per call. Stopped by pid."""
    started: list[subprocess.Popen[bytes]] = []

    def start(mib: int) -> str:
        port = _free_port()
        env = {**os.environ, "FAKE_PHYS_MIB": str(mib), "LD_PRELOAD": str(shim)}
        argv = [str(llama_build.binary("ggml-rpc-server")), "-p", str(port), "-t", "1"]
        started.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        endpoint = f"127.0.0.1:{port}"
        fit = str(llama_build.binary("llama-fit-params"))
        for _ in range(200):  # until llama.cpp sees it (no head start: it is asked)
            r = subprocess.run([fit, "--rpc", endpoint, "--list-devices"], capture_output=True, text=True)
            if f"RPC0: {endpoint} ({mib} MiB, {mib} MiB free)" in r.stdout + r.stderr:
                return endpoint
            time.sleep(0.05)
        raise AssertionError(f"the RPC device at {endpoint} never showed {mib} MiB")

    try:
        yield start  # type: ignore[misc]
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def _fit_answer(build: Build, model: Path, endpoint: str, ubatch: int) -> tuple[str, dict[str, int]]:
    """llama.cpp's own fit (default -fitt 1024) at the plan's inputs, and `-fitp on` of its answer: device bytes."""
    fit = str(build.binary("llama-fit-params"))
    common = ["-m", str(model), "--rpc", endpoint, "-c", "4096", "-ub", str(ubatch), "-b", "2048"]
    r = subprocess.run([fit, *common], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-1500:]
    line = r.stdout.strip().splitlines()[-1]
    a = parse_fit_line(line)
    placed = [*a.server_flags(), "--fit", "off", "-fitp", "on"]
    rows = subprocess.run([fit, *common, *placed], capture_output=True, text=True, timeout=60)
    assert rows.returncode == 0, rows.stderr[-1500:]
    return line, {r.name: r.model_bytes for r in parse_fit_print(rows.stdout)}


@pytest.mark.parametrize("arch", ["qwen3moe", "deepseek2"])
def test_runq_keeps_at_least_fits_expert_bytes_on_the_device(
    llama_build: Build,
    models: dict[str, SynthModel],
    device,
    arch: str,  # type: ignore[no-untyped-def]
) -> None:
    m = open_local(models[arch].path)
    experts = {t.name: t for t in m.tensors.tensors if t.is_expert}
    taken = []
    for mib in DEVICE_MIB:
        endpoint = device(mib)
        gpu = f"RPC0[{endpoint}]"
        code, out, err = runq_main("plan", str(models[arch].path), "--ctx", "4096", "--rpc", endpoint,
                              "--worker", f"at={endpoint},gpu={mib}MiB", "--llama-bin",
                              str(llama_build.path / "bin"), "--json")  # fmt: skip
        assert code == 0, err
        data = json.loads(out)
        line, projected = _fit_answer(llama_build, models[arch].path, endpoint, data["ubatch"])
        # runq's replay of fit's answer is llama.cpp's own placement: the same bytes on the device, to the MiB.
        fit = fit_placement(m.tensors, m.hparams.n_layer, parse_fit_line(line), [gpu], {gpu: mib * MiB})
        on_device = sum(m.tensors[n].nbytes for n, d in fit.items() if d == gpu)
        assert on_device // MiB == projected["RPC0"] // MiB, (line, on_device / MiB, projected)
        fit_experts = expert_bytes(m.tensors, fit).get(gpu, 0)
        # runq's placement, from its own command: every expert tensor not sent to the CPU is on the device.
        ours = sum(t.nbytes for n, t in experts.items() if n not in set(data["cpu_tensors"]))
        assert ours >= fit_experts, (mib, line, ours / MiB, fit_experts / MiB)
        assert re.search(r"-ot|-ngl", " ".join(data["argv"]))
        # It says whose placement it took and why, in the JSON and in its reasons.
        placement = data["placement"]
        assert placement["by"] in ("runq", "llama.cpp fit") and placement["fit"][0]["device"] == gpu
        assert placement["fit"][0]["fit_expert_bytes"] == fit_experts
        assert placement["fit"][0]["runq_expert_bytes"] == ours
        assert f"placement: {placement['why']}" in data["reasons"]
        assert (placement["by"] == "llama.cpp fit") == (placement["fit"][0]["runq_expert_bytes_before"] < fit_experts)
        taken.append(placement["by"])
    if arch == "deepseek2":  # runq's own compute estimate for MLA kept it off the device: grown to fit's placement
        assert "llama.cpp fit" in taken
