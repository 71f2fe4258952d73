"""The planner's memory prediction against llama.cpp's own projection (`llama-fit-params -fitp on`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from launcher.llama.argv import plan_flags
from launcher.llama.build import Build
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.plan.place import plan
from launcher.plan.types import Plan, Request
from launcher.units import GiB, MiB
from tests.helpers import SHAPE, machine_with_ram


@pytest.fixture(scope="module")
def midsize(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    d = tmp_path_factory.mktemp("midsize")
    ds = SynthSpec(arch="deepseek2", q_lora_rank=128, kv_lora_rank=128, qk_nope_dim=64, qk_rope_dim=32, v_head_dim=64)
    qw = SynthSpec(arch="qwen3moe", n_head_kv=2, head_dim=64)
    return {
        "deepseek2": write_model(ds.with_(**SHAPE), d / "ds.gguf"),
        "qwen3moe": write_model(qw.with_(**SHAPE), d / "qw.gguf"),
    }


def fit_params(build: Build, model: Path, p: Plan) -> dict[str, int]:
    """Bytes per device as llama.cpp projects them: model + context + compute."""
    flags = plan_flags(p)
    i = flags.index("-cram")  # a llama-server flag, not a common one
    del flags[i : i + 2]
    r = subprocess.run(
        [str(build.binary("llama-fit-params")), "-m", str(model), *flags, "-fitp", "on"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = {}
    for line in r.stdout.strip().splitlines():
        name, *mib = line.split()
        out["CPU" if name == "Host" else name] = sum(int(x) for x in mib) * MiB
    return out


@pytest.mark.parametrize("arch", ["deepseek2", "qwen3moe"])
@pytest.mark.parametrize(("ctx", "ubatch"), [(4096, 512), (4096, 2048), (16384, 512), (16384, 2048)])
def test_cpu_plan_matches_llama_fit_params(
    llama_build: Build, midsize: dict[str, SynthModel], arch: str, ctx: int, ubatch: int
) -> None:
    m = open_local(midsize[arch].path)
    p = plan(machine_with_ram(16 * GiB), m.tensors, m.hparams, Request(ctx=ctx, ubatch=ubatch))
    measured = fit_params(llama_build, midsize[arch].path, p)
    for d in p.devices:
        predicted = d.weights_bytes + d.kv_bytes + d.compute_bytes
        assert predicted == pytest.approx(measured[d.name], rel=0.10), (d.name, predicted / MiB, measured[d.name] / MiB)
