"""Sizes from llama.cpp itself: header-only replicas, `llama-fit-params -fitp on`, re-planning on its rows.

Real llama.cpp (the cached CPU build), real generated GGUF files, the real local hub.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.catalog.profiles import require_profile
from launcher.catalog.sources import ModelSource
from launcher.errors import ProjectionFailed
from launcher.hub.replica import SPARSE_SLACK_BYTES, disk_bytes, local_header_files, write_replica
from launcher.llama.argv import fit_flags
from launcher.llama.binaries import binaries_at
from launcher.llama.build import Build
from launcher.llama.fit import Oracle, project, project_sizes, refine
from launcher.measure.synth import SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.plan.choose import choose
from launcher.plan.kv_cache import kv_layout
from launcher.plan.memory import cpu_only_compute_bytes
from launcher.plan.place import plan
from launcher.plan.projection import ESTIMATE, parse_fit_print
from launcher.plan.types import Request
from launcher.units import GiB, MiB
from tests.helpers import SHAPE, machine, machine_with_ram, runq_proc, session_cache
from tests.support.sparse_models import write_sparse_quant

DS = require_profile("deepseek-v3.1")
BUILD = "0c1e570"


def fit_rows(build: Build, model: Path, flags: list[str]) -> dict[str, tuple[int, int, int]]:
    """llama.cpp's own answer, asked independently of runq's code path."""
    r = subprocess.run(
        [str(build.binary("llama-fit-params")), "-m", str(model), *flags, "-fitp", "on"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return {row.name: (row.model_bytes, row.context_bytes, row.compute_bytes) for row in parse_fit_print(r.stdout)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """deepseek2 (MLA) and qwen3moe (GQA) at n_embd 512, trained for 32k, as real files and as replicas."""
    d = tmp_path_factory.mktemp("shapes")
    ds = SynthSpec(arch="deepseek2", q_lora_rank=128, kv_lora_rank=128, qk_nope_dim=64, qk_rope_dim=32, v_head_dim=64)
    qw = SynthSpec(arch="qwen3moe", n_head_kv=2, head_dim=64)
    out = {}
    for name, spec in (("deepseek2", ds), ("qwen3moe", qw)):
        m = write_model(spec.with_(**SHAPE, n_ctx_train=32768), d / name / f"{name}.gguf", shards=2)
        out[name] = m.path
        out[f"{name}-replica"] = write_replica(local_header_files(m.path), d / f"{name}-replica")
    return out


def test_replica_has_the_same_headers_and_sizes_and_takes_no_disk(tmp_path: Path, llama_build: Build) -> None:
    # A DeepSeek-V3.1 UD-Q2_K_XL-shaped set: 6 shards, 255 GB apparent.
    real = write_sparse_quant(DS, DS.quant("UD-Q2_K_XL"), tmp_path / "real")
    files = local_header_files(real[0])
    assert [f.name for f in files] == [p.name for p in real]
    first = write_replica(files, tmp_path / "replica")
    replica = sorted(first.parent.iterdir())
    assert [p.name for p in replica] == [p.name for p in real]
    for r, f, h in zip(replica, real, files, strict=True):
        assert r.stat().st_size == f.stat().st_size
        with r.open("rb") as a, f.open("rb") as b:
            assert a.read(len(h.header)) == b.read(len(h.header)) == h.header
    total = sum(p.stat().st_size for p in replica)
    assert total > 200 * 10**9 and disk_bytes(first.parent) < sum(len(f.header) for f in files) + 6 * SPARSE_SLACK_BYTES
    assert write_replica(files, tmp_path / "replica") == first  # complete: reused
    # llama.cpp reads the replica as the model: the same projection as the set it was made from.
    flags = ["-c", "32768", "-ngl", "0", "-ub", "512"]
    assert fit_rows(llama_build, first, flags) == fit_rows(llama_build, real[0], flags)
    context = fit_rows(llama_build, first, flags)["CPU"][1]
    assert context == 2196 * MiB  # 70,272 B/token x 32768 (llama-cpp.md)


@pytest.mark.parametrize("arch", ["deepseek2", "qwen3moe"])
@pytest.mark.parametrize(("ctx", "ubatch"), [(4096, 512), (4096, 2048), (32768, 512), (32768, 2048)])
def test_cpu_plan_on_a_replica_equals_llama_cpp(
    llama_build: Build, shapes: dict[str, Path], arch: str, ctx: int, ubatch: int
) -> None:
    replica = shapes[f"{arch}-replica"]
    m = open_local(replica)
    req = Request(ctx=ctx, ubatch=ubatch)
    first = plan(machine_with_ram(16 * GiB), m.tensors, m.hparams, req)
    src = ModelSource(arch, m.tensors, m.hparams, exact=True, size_bytes=m.file_bytes)
    p, rounds, _ = refine(
        Oracle.find(binaries_at(llama_build.bin_dir)), replica, machine_with_ram(16 * GiB), src, req, first
    )  # type: ignore[arg-type]
    assert rounds == 1  # a CPU plan's flags do not change
    _, context, compute = fit_rows(llama_build, replica, fit_flags(p))["CPU"]
    assert p.cpu.kv_bytes // MiB * MiB == context  # exactly what llama.cpp prints (whole MiB, rounded down)
    assert p.cpu.compute_bytes == pytest.approx(compute, rel=0.05)
    assert p.cpu.kv_source == p.cpu.compute_source == f"llama.cpp projection, build {BUILD}"
    # The real split set gives the same answer as its replica.
    assert fit_rows(llama_build, shapes[arch], fit_flags(p))["CPU"][1:] == (context, compute)


def test_described_gpu_plan_takes_llama_cpp_context_and_re_plans(llama_build: Build, shapes: dict[str, Path]) -> None:
    replica = shapes["deepseek2-replica"]
    m = open_local(replica)
    src = ModelSource("ds", m.tensors, m.hparams, exact=True, size_bytes=m.file_bytes)
    mach = machine(2.2, ram_gib=64)  # a small described GPU: only part of the experts fit
    req = Request(ctx=32768)
    choice = choose("ds", mach, [src], req)
    refined, note, _ = project_sizes(choice, mach, req, binaries_at(llama_build.bin_dir), lambda s: replica)
    assert note.startswith(f"llama.cpp projection, build {BUILD}")
    p = refined.chosen.plan
    gpu = p.gpu_devices[0]
    host_context = fit_rows(llama_build, replica, fit_flags(p))["CPU"][1]
    assert (gpu.kv_bytes + p.cpu.kv_bytes) // MiB * MiB == host_context  # the same on every backend
    assert gpu.kv_source == p.cpu.kv_source == f"llama.cpp projection, build {BUILD}"
    assert gpu.compute_source == ESTIMATE  # no such GPU here: the CUDA model
    assert p.fits and gpu.used_bytes <= gpu.budget_bytes


def test_a_model_llama_cpp_cannot_read_falls_back_to_the_estimate_with_its_error(
    llama_build: Build, shapes: dict[str, Path], tmp_path: Path
) -> None:
    # The same header with an architecture llama.cpp does not know (same length: the header stays valid for runq).
    src_path = shapes["qwen3moe-replica"]
    files = [
        replace(f, header=f.header.replace(b"qwen3moe", b"qwen9moe"), name=f.name) for f in local_header_files(src_path)
    ]
    bad = write_replica(files, tmp_path / "bad")
    m = open_local(bad)
    assert m.hparams.arch == "qwen9moe"
    src = ModelSource("bad", m.tensors, m.hparams, exact=True, size_bytes=m.file_bytes)
    req = Request(ctx=4096)
    choice = choose("bad", machine_with_ram(16 * GiB), [src], req)
    same, note, _ = project_sizes(
        choice, machine_with_ram(16 * GiB), req, binaries_at(llama_build.bin_dir), lambda s: bad
    )
    assert same is choice
    assert note.startswith("runq estimate (llama.cpp could not project bad, qwen9moe: llama-fit-params failed")
    # llama.cpp's own line: the cause when its log got out before it aborted, else its exception's text.
    assert "unknown model architecture: 'qwen9moe'" in note or note.endswith("failed to load model)")
    with pytest.raises(ProjectionFailed, match="llama-fit-params failed"):
        project(Oracle.find(binaries_at(llama_build.bin_dir)), bad, choice.chosen.plan)  # type: ignore[arg-type]


def test_plan_cli_says_which_numbers_are_llama_cpp_s(llama_build: Build, shapes: dict[str, Path]) -> None:
    env = dict(os.environ)
    argv = ["plan", str(shapes["qwen3moe"]), "--ctx", "8192", "--gpu", "2GiB", "--ram", "16GiB"]
    r = runq_proc(*argv, "--json", "--llama-bin", str(llama_build.bin_dir), env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    gpu, cpu = data["devices"]
    assert gpu["kv_source"] == cpu["kv_source"] == f"llama.cpp projection, build {BUILD}"
    assert gpu["compute_source"] == "runq estimate" and gpu["weights_source"] == "GGUF header"
    assert f"KV cache and compute: llama.cpp projection, build {BUILD}" in data["sizes"]
    assert data["sizes"].endswith("; compute, with GPUs this build cannot see: runq estimate")  # as the table says
    text = runq_proc(*argv, "--llama-bin", str(llama_build.bin_dir), env=env).stdout
    sources = f"sources: weights: GGUF header; KV cache: llama.cpp projection, build {BUILD}; compute: runq estimate"
    assert sources in text
    r = runq_proc(*argv, "--json", "--no-projection", "--llama-bin", str(llama_build.bin_dir), env=env)
    assert {d["kv_source"] for d in json.loads(r.stdout)["devices"]} == {"runq estimate"}


def test_build_label_from_version_when_not_runq_s_build(llama_build: Build, tmp_path: Path) -> None:
    own = tmp_path / "bin"
    own.mkdir()
    (own / "llama-fit-params").symlink_to(llama_build.binary("llama-fit-params"))
    oracle = Oracle.find(binaries_at(own))
    assert oracle is not None and oracle.build == BUILD  # read from `--version`, no manifest here
    assert Oracle.find(binaries_at(tmp_path)) is None  # no llama-fit-params: no oracle


GPU_ROWS = Path(__file__).resolve().parents[2] / "bench" / "gpu_fit_rows.json"


# Rows where memory.py's CUDA model is more than GPU_ROWS_UPPER above llama.cpp (it is never below any row):
# (arch, experts, ctx) -> the most it may be above. qwen3moe at 64k: the allocator's peak drops by a fifth there
# (1542 -> 1219 MiB at -ub 2048) while 4k-32k need the higher bound. deepseek4 with -cmoe at 4k: llama.cpp keeps
# one copied expert tensor there and two from 16k up; the model counts two at every context.
GPU_ROWS_UPPER = 1.25
GPU_ROWS_ABOVE = {("qwen3moe", "gpu", 65536): 1.36, ("deepseek4", "cpu", 4096): 1.88}


@pytest.mark.skipif(not GPU_ROWS.is_file(), reason="bench/gpu_fit_rows.py has not been run on an NVIDIA GPU yet")
def test_cuda_compute_model_is_never_below_a_recorded_gpu_row(tmp_path: Path) -> None:
    from bench.shapes import shapes
    from launcher.plan import memory as mem

    data = json.loads(GPU_ROWS.read_text())
    models = {s.name: open_local(s.first) for s in shapes(tmp_path)}
    checked, archs = 0, set()
    for row in data["rows"]:
        m = models.get(row["shape"])
        if m is None or row.get("fa") == "off" or row.get("compute_mib") is None:
            continue  # runq plans -fa auto, which is on for every head size here (the on rows equal the auto ones)
        copy = max(t.nbytes for t in m.tensors.tensors if t.is_expert) if row["experts"] == "cpu" else 0
        ours = mem.gpu_compute_bytes(m.hparams, row["ctx"], row["ubatch"], offload_copy_bytes=copy)
        real = row["compute_mib"] * MiB
        upper = GPU_ROWS_ABOVE.get((row["arch"], row["experts"], row["ctx"]), GPU_ROWS_UPPER)
        assert real + MiB <= ours <= real * upper, (row, ours / MiB)  # llama.cpp prints whole MiB (floored)
        checked += 1
        archs.add(row["arch"])
    assert checked >= 180 and len(archs) == 10


def test_tui_plans_ask_llama_cpp_too(
    llama_build: Build, shapes: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.pipeline.target import resolve
    from launcher.tui.data import plan_target

    monkeypatch.setenv("RUNQ_CACHE_DIR", str(session_cache(llama_build)))  # where runq's build is cached
    target = resolve(str(shapes["deepseek2"]), network=False)
    m = machine(2.2, ram_gib=64)
    planned, _, problem = plan_target(m, target, 8192, project=True)
    assert problem is None and planned is not None
    p = planned.plan
    assert {d.kv_source for d in p.devices} == {f"llama.cpp projection, build {BUILD}"}
    plain, _, _ = plan_target(m, target, 8192)  # the first screen plans every model: estimates only
    assert plain is not None and {d.kv_source for d in plain.chosen.plan.devices} == {ESTIMATE}


# runq's own KV and compute estimates (used before any llama.cpp build) against llama.cpp, on real-shaped header-only
# sets of the sparse-attention architectures: DSA (deepseek32, glm-dsa: indexer score, indexer key cache in the layers
# that run an indexer) and DeepSeek-V4 (compressed caches, compressor states). The KV cache is exact (llama.cpp prints
# whole MiB); compute may be above llama.cpp's by a documented margin, never below.
@pytest.mark.parametrize("profile", ["deepseek-v3.2", "glm-5.2", "deepseek-v4-flash"])
def test_sparse_attention_estimates_against_llama_cpp(llama_build: Build, tmp_path: Path, profile: str) -> None:
    p = require_profile(profile)
    q = next(x for x in p.quants if x.name == "UD-Q2_K_XL")
    first = write_sparse_quant(p, q, tmp_path)[0]
    hp = open_local(first).hparams
    for ctx, ubatch in ((4096, 2048), (131072, 512)):
        _, context, compute = fit_rows(llama_build, first, ["-c", str(ctx), "-ngl", "0", "-ub", str(ubatch)])["CPU"]
        assert kv_layout(hp, ubatch=ubatch).bytes_for(ctx) // MiB * MiB == context, (ctx, ubatch)
        ours = cpu_only_compute_bytes(hp, ctx, ubatch)
        assert compute <= ours <= compute * 1.12, (ctx, ubatch, ours / MiB, compute / MiB)
