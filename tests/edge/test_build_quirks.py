"""Build quirks of a model: MiniMax on CUDA needs -DGGML_CUDA_FORCE_CUBLAS=ON, and runq builds and picks accordingly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.catalog.profiles import require_profile
from launcher.llama import build_config as bc
from launcher.llama.build import find_build

MINIMAX = require_profile("minimax-m2.7")


def test_minimax_on_cuda_is_configured_with_cublas_forced() -> None:
    quirks = tuple(MINIMAX.build_quirks)
    cuda = bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cuda", ("86",), extra=bc.quirk_options("cuda", quirks))
    args = bc.configure_args(cuda, "src", "build", ccache=False)
    assert "-DGGML_CUDA=ON" in args and args[-1] == "-DGGML_CUDA_FORCE_CUBLAS=ON"
    plain = bc.BuildConfig(bc.LLAMA_CPP_COMMIT, "cuda", ("86",))
    assert "-DGGML_CUDA_FORCE_CUBLAS=ON" not in bc.configure_args(plain, "src", "build", ccache=False)
    assert cuda.key != plain.key  # a separate cached build: other models keep llama.cpp's own kernels
    assert bc.quirk_options("cpu", quirks) == ()  # nothing to do on the CPU
    assert bc.quirk_flags("cuda", tuple(require_profile("gpt-oss-120b").build_quirks)) == []
    assert require_profile("minimax-m2.1").build_quirks == ["cuda_force_cublas"]


def _fake_build(root: Path, key: str, configure: list[str], built_at: str) -> Path:
    d = root / "builds" / key
    (d / "bin").mkdir(parents=True)
    for t in bc.TARGETS:
        (d / "bin" / t).write_text("")
    manifest = {"commit": bc.LLAMA_CPP_COMMIT, "backend": "cuda", "configure": configure, "built_at": built_at}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d / "bin"


def test_a_minimax_run_picks_the_build_with_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(tmp_path))
    quirks = tuple(MINIMAX.build_quirks)

    def found(*q: str) -> Path | None:
        b = find_build("cuda", tuple(q))
        return b.bin_dir if b else None

    plain = _fake_build(tmp_path, "plain-cuda", ["cmake", "-DGGML_CUDA=ON"], "2026-11-27T10:00:00")
    assert found() == plain
    assert found(*quirks) is None  # a build without the option does not do for MiniMax
    forced = _fake_build(
        tmp_path, "forced-cuda", ["cmake", "-DGGML_CUDA=ON", "-DGGML_CUDA_FORCE_CUBLAS=ON"], "2026-11-27T09:00:00"
    )
    assert found(*quirks) == forced
    assert found() == plain  # the newest for every other model
