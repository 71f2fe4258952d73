"""What to build: the pinned llama.cpp, the backend, the CMake arguments, the cache key.

Pure: no I/O. The pin lives here and nowhere else: the git source checks out
LLAMA_CPP_COMMIT, the PyPI source is the llama-cpp-python release that vendors
the same commit (docs/reference/llama-cpp.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from launcher.errors import UsageError
from launcher.machine.spec import Machine

LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
LLAMA_CPP_GIT_URL = "https://github.com/ggml-org/llama.cpp"
PYPI_PACKAGE = "llama-cpp-python"
PYPI_VERSION = "0.3.36"  # vendors llama.cpp at LLAMA_CPP_COMMIT

# Only what runq runs; tests, examples and the web-UI download stay off. `ggml-rpc-server` (tools/rpc, built
# with -DGGML_RPC=ON) is what `runq worker` starts on the other hosts; the same flag lets llama-server take --rpc.
TARGETS = ("llama-server", "llama-cli", "llama-bench", "llama-fit-params", "llama-gguf-split", "ggml-rpc-server")
RPC_SERVER = "ggml-rpc-server"

Backend = Literal["cpu", "cuda"]
BACKENDS: tuple[str, ...] = ("cpu", "cuda")
FUTURE_BACKENDS = ("rocm", "vulkan", "metal")  # room for them: named, refused clearly until built and tested


@dataclass(frozen=True)
class BuildConfig:
    commit: str
    backend: Backend
    cuda_archs: tuple[str, ...] = ()  # "86", "90" …: only the installed GPUs' compute capabilities
    native: bool = True  # -march=native: fastest CPU kernels, binaries not portable to other CPUs
    extra: tuple[tuple[str, str], ...] = field(default=())  # more -D options

    @property
    def key(self) -> str:
        """A directory name that changes whenever anything that changes the binaries changes."""
        payload = json.dumps(
            {
                "commit": self.commit,
                "backend": self.backend,
                "archs": self.cuda_archs,
                "native": self.native,
                "extra": self.extra,
                "targets": TARGETS,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        archs = f"-sm{'_'.join(self.cuda_archs)}" if self.cuda_archs else ""
        return f"{self.commit[:10]}-{self.backend}{archs}-{digest}"


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    cuda_archs: tuple[str, ...]
    warnings: tuple[str, ...]


def choose_backend(
    machine: Machine,
    nvcc: str | None,
    requested: str | None = None,
    archs_override: tuple[str, ...] = (),
) -> BackendChoice:
    """CUDA when an NVIDIA GPU and nvcc are both there, the CPU otherwise; `requested` overrides."""
    if requested in FUTURE_BACKENDS:
        raise UsageError(f"the {requested} backend is not supported by runq yet", hint="use --backend cpu or cuda")
    if requested not in (None, *BACKENDS):
        raise UsageError(f"unknown backend {requested!r}", hint="use --backend cpu or --backend cuda")
    archs = archs_override or tuple(sorted({g.sm for g in machine.gpus if g.sm}, key=int))
    if requested == "cpu":
        return BackendChoice("cpu", (), ())
    if requested == "cuda":
        if not nvcc:
            raise UsageError(
                "--backend cuda needs nvcc, the CUDA compiler, and none was found (PATH, /usr/local/cuda*/bin)",
                hint="install the CUDA toolkit (Debian/Ubuntu: nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit)",
            )
        if not archs:
            raise UsageError(
                "--backend cuda: no GPU to build for was found",
                hint="name the compute capability with --cuda-arch, e.g. --cuda-arch 86",
            )
        return BackendChoice("cuda", archs, ())
    if machine.gpus and archs:
        if nvcc:
            return BackendChoice("cuda", archs, ())
        return BackendChoice(
            "cpu",
            (),
            (
                f"{len(machine.gpus)} NVIDIA GPU(s) found but no nvcc: building for the CPU only, which is much "
                "slower; install the CUDA toolkit (Debian/Ubuntu: nvidia-cuda-toolkit) and run `runq build` again",
            ),
        )
    return BackendChoice("cpu", (), ())


# CPU flag (as /proc/cpuinfo and py-cpuinfo name it) -> the ggml option that compiles for it.
_X86_FEATURES = (
    ("sse4_2", "GGML_SSE42"),
    ("f16c", "GGML_F16C"),
    ("fma", "GGML_FMA"),
    ("bmi2", "GGML_BMI2"),
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)
AMX_NOTE = (
    "AMX left out: llama.cpp at this commit segfaults in ggml_backend_amx_mul_mat on AMX CPUs "
    "(llama.cpp issue #20824, seen here with MoE models); everything else this CPU has is used"
)


@dataclass(frozen=True)
class CpuTarget:
    native: bool
    options: tuple[tuple[str, str], ...]
    note: str | None


def cpu_target(cpu_flags: frozenset[str], *, portable: bool = False) -> CpuTarget:
    """-march=native, except on CPUs with AMX: then every feature of this CPU but AMX, named one by one."""
    if portable:
        return CpuTarget(native=False, options=(), note=None)
    if not cpu_flags & {"amx_int8", "amx_tile", "amx_bf16"}:
        return CpuTarget(native=True, options=(), note=None)
    opts = [(option, "ON" if flag in cpu_flags else "OFF") for flag, option in _X86_FEATURES]
    opts += [("GGML_AMX_TILE", "OFF"), ("GGML_AMX_INT8", "OFF"), ("GGML_AMX_BF16", "OFF")]
    return CpuTarget(native=False, options=tuple(opts), note=AMX_NOTE)


def configure_args(cfg: BuildConfig, source_dir: str, build_dir: str, *, ccache: bool) -> list[str]:
    """The `cmake -S … -B …` command line."""
    build_number, short = "0", cfg.commit[:7]  # the tree's history may be missing: say "unknown", not a wrong count
    args = [
        "cmake",
        "-S",
        source_dir,
        "-B",
        build_dir,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        f"-DLLAMA_BUILD_NUMBER={build_number}",
        f"-DLLAMA_BUILD_COMMIT={short}",
        f"-DGGML_NATIVE={'ON' if cfg.native else 'OFF'}",
        f"-DGGML_CCACHE={'ON' if ccache else 'OFF'}",
        "-DGGML_RPC=ON",
    ]
    if cfg.backend == "cuda":
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(cfg.cuda_archs)}"]
    args += [f"-D{k}={v}" for k, v in cfg.extra]
    return args


# Options a model needs on a backend (a profile's build_quirks). MiniMax-M2.x Q4_K/Q5_K blk.61.ffn_down_exps give NaN
# on CUDA unless matrix multiplications go through cuBLAS (bartowski/MiniMaxAI_MiniMax-M2.7-GGUF README,
# landscape-2026 §1.6).
QUIRK_OPTIONS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "cuda_force_cublas": {"cuda": (("GGML_CUDA_FORCE_CUBLAS", "ON"),)},
}


def quirk_options(backend: str, quirks: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """The -D options these quirks need on this backend (none on others)."""
    out: list[tuple[str, str]] = []
    for q in quirks:
        for opt in QUIRK_OPTIONS.get(q, {}).get(backend, ()):
            if opt not in out:
                out.append(opt)
    return tuple(out)


def quirk_flags(backend: str, quirks: tuple[str, ...] | list[str]) -> list[str]:
    """The same as cmake arguments, as a build's manifest records them ('-DGGML_CUDA_FORCE_CUBLAS=ON')."""
    return [f"-D{k}={v}" for k, v in quirk_options(backend, quirks)]


def build_args(build_dir: str, jobs: int) -> list[str]:
    return ["cmake", "--build", build_dir, "--config", "Release", "-j", str(jobs), "--target", *TARGETS]


def required_disk_bytes(backend: Backend) -> int:
    """Source (~180 MiB) plus the build tree: about 1.5 GiB for the CPU, several GiB with CUDA kernels."""
    return (2 if backend == "cpu" else 8) * 1024**3
