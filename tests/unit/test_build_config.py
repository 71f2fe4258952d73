"""Golden CMake arguments for described machines, backend choice, capabilities parsing. No compiling here."""

from __future__ import annotations

import pytest

from launcher.errors import UsageError
from launcher.llama import build_config as bc
from launcher.llama.capabilities import parse_help, parse_version
from launcher.machine.spec import GPU, Machine

NO_AMX = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
WITH_AMX = NO_AMX | {"avx512f", "avx512_vnni", "avx512_bf16", "avx512vbmi", "avx_vnni", "amx_int8", "amx_tile"}
COMMON = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_NUMBER=0",
    "-DLLAMA_BUILD_COMMIT=0c1e570",
]


def gpu(i: int, cc: tuple[int, int]) -> GPU:
    return GPU(i, f"GPU {i}", 24 << 30, 24 << 30, compute_capability=cc)


def args_for(
    machine: Machine, nvcc: str | None, cpu_flags: frozenset[str] = NO_AMX
) -> tuple[list[str], bc.BackendChoice]:
    choice = bc.choose_backend(machine, nvcc)
    target = bc.cpu_target(cpu_flags)
    cfg = bc.BuildConfig(bc.LLAMA_CPP_COMMIT, choice.backend, choice.cuda_archs, target.native, target.options)
    return bc.configure_args(cfg, "SRC", "BUILD", ccache=False), choice


def test_no_gpu() -> None:
    args, choice = args_for(Machine(), nvcc=None)
    assert args == [
        "cmake", "-S", "SRC", "-B", "BUILD", *COMMON, "-DGGML_NATIVE=ON", "-DGGML_CCACHE=OFF", "-DGGML_RPC=ON"
    ]  # fmt: skip
    assert choice.warnings == ()


def test_one_sm86_gpu() -> None:
    args, _ = args_for(Machine(gpus=(gpu(0, (8, 6)),)), nvcc="/usr/local/cuda/bin/nvcc")
    assert args[-2:] == ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86"]
    assert "-DGGML_NATIVE=ON" in args


def test_two_different_gpus_build_both_archs_only() -> None:
    args, choice = args_for(Machine(gpus=(gpu(0, (8, 9)), gpu(1, (8, 6)), gpu(2, (8, 9)))), nvcc="nvcc")
    assert choice.cuda_archs == ("86", "89")
    assert args[-1] == "-DCMAKE_CUDA_ARCHITECTURES=86;89"


def test_gpu_without_nvcc_builds_for_cpu_and_warns() -> None:
    args, choice = args_for(Machine(gpus=(gpu(0, (8, 6)),)), nvcc=None)
    assert choice.backend == "cpu"
    assert "-DGGML_CUDA=ON" not in args
    assert choice.warnings and "nvidia-cuda-toolkit" in choice.warnings[0]


def test_amx_cpu_gets_every_feature_but_amx() -> None:
    args, _ = args_for(Machine(), nvcc=None, cpu_flags=WITH_AMX)
    assert "-DGGML_NATIVE=OFF" in args
    for on in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI", "GGML_FMA"):
        assert f"-D{on}=ON" in args
    for off in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert f"-D{off}=OFF" in args
    assert bc.cpu_target(WITH_AMX).note and "20824" in bc.cpu_target(WITH_AMX).note  # type: ignore[operator]


def test_build_targets_and_jobs() -> None:
    assert bc.build_args("B", 16) == [
        "cmake", "--build", "B", "--config", "Release", "-j", "16", "--target",
        "llama-server", "llama-cli", "llama-bench", "llama-fit-params", "llama-gguf-split",
        "ggml-rpc-server",
    ]  # fmt: skip


def test_backend_overrides_and_errors() -> None:
    m = Machine(gpus=(gpu(0, (9, 0)),))
    assert bc.choose_backend(m, "nvcc", "cpu").backend == "cpu"
    assert bc.choose_backend(Machine(), "nvcc", "cuda", ("90",)).cuda_archs == ("90",)
    with pytest.raises(UsageError, match="needs nvcc"):
        bc.choose_backend(m, None, "cuda")
    with pytest.raises(UsageError, match="no GPU to build for"):
        bc.choose_backend(Machine(), "nvcc", "cuda")
    with pytest.raises(UsageError, match="rocm backend is not supported by runq yet"):
        bc.choose_backend(m, "nvcc", "rocm")
    with pytest.raises(UsageError, match="unknown backend 'opencl'"):
        bc.choose_backend(m, "nvcc", "opencl")


def test_cache_key_changes_with_what_changes_the_binaries() -> None:
    base = bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cpu")
    keys = {
        base.key,
        bc.BuildConfig("f" * 40, "cpu").key,
        bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cuda", ("86",)).key,
        bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cuda", ("89",)).key,
        bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cpu", native=False).key,
    }
    assert len(keys) == 5
    assert base.key == bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cpu").key
    assert base.key.startswith("0c1e57098b-cpu-")


HELP = """
-lm,   --load-mode MODE                 model loading mode (default: auto)
-ot,   --override-tensor <tensor name pattern>=<buffer type>,...
-fit,  --fit [on|off]                   whether to adjust unset arguments to fit in device memory
-cmoe, --cpu-moe                        keep all Mixture of Experts (MoE) weights in the CPU
-ncmoe, --n-cpu-moe N                   keep the MoE weights of the first N layers in the CPU
--reasoning-budget N                    token budget for thinking
--jinja, --no-jinja                     whether to use jinja template engine for chat (default: enabled)
"""


def test_parse_help() -> None:
    flags = parse_help(HELP)
    assert flags["load_mode"] and flags["override_tensor"] and flags["fit"] and flags["n_cpu_moe"]
    assert flags["cpu_moe"] and flags["reasoning_budget"] and flags["jinja"]
    assert not flags["no_mmap"] and not flags["mlock"] and not flags["cache_ram"]
    old = parse_help("--no-mmap    do not memory-map model\n--mlock   keep the model in RAM\n-ot, --override-tensor")
    assert old["no_mmap"] and old["mlock"] and not old["load_mode"] and not old["fit"]


def test_parse_version() -> None:
    assert parse_version("version: 0.5.0-dev (build 0, commit 0c1e570)\nbuilt with GNU 12.2.0") == (
        "0.5.0-dev",
        0,
        "0c1e570",
    )
    assert parse_version("garbage") == (None, None, None)


def test_commands_follow_what_the_build_accepts(models) -> None:  # type: ignore[no-untyped-def]
    """An older llama.cpp (no --fit, no -lm, no --cache-ram) gets --no-mmap instead of -lm none, nothing unknown."""
    from launcher.llama.argv import plan_flags
    from launcher.model.shards import open_local
    from launcher.plan import kv_cache, memory
    from launcher.plan.place import plan
    from launcher.plan.types import Request
    from tests.helpers import gpu_for

    m = open_local(models["deepseek2-q8"].path)
    t, hp = m.tensors, m.hparams
    half = sum(t.expert_bytes(il) for il in t.expert_layers[: len(t.expert_layers) // 2])
    room = (
        t.non_expert_bytes() + kv_cache.kv_layout(hp).bytes_for(2048) + memory.gpu_compute_bytes(hp, 2048, 512) + half
    )
    p = plan(gpu_for(room), t, hp, Request(ctx=2048, ubatch=512))
    assert p.load_mode == "none"
    new = plan_flags(p)
    assert "--fit" in new and "-lm" in new and "-cram" in new
    old = plan_flags(p, parse_help("--no-mmap  do not memory-map\n--mlock\n-ot, --override-tensor\n-ngl"))
    assert "--no-mmap" in old and not {"--fit", "-lm", "-cram"} & set(old)
    assert old.count("-ot") == new.count("-ot") >= 1
