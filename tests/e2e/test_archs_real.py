"""Every MoE architecture runq plans, in the real llama.cpp: generated models load with an expert -ot plan,
generate tokens, and pass runq's placement verification (every planned tensor moved, nothing else)."""

from __future__ import annotations

import signal

import pytest

from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.model.tensors import Role
from tests.e2e.test_run import RunningRunq, env, running, serve_verified  # noqa: F401  (fixtures)

BASE = SynthSpec(n_layer=6, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16, n_head_kv=2, head_dim=64)
SPECS = {
    "deepseek2": BASE.with_(arch="deepseek2"),  # MLA, dense leading layer, shared expert
    "qwen3moe": BASE.with_(arch="qwen3moe"),
    "gpt-oss": BASE.with_(arch="gpt-oss", expert_type="MXFP4", sliding_window=128),  # sinks, biases, SWA
    "glm4moe": BASE.with_(arch="glm4moe", n_nextn=1),  # a NextN layer llama.cpp skips
    "minimax-m2": BASE.with_(arch="minimax-m2"),
    "qwen35moe": BASE.with_(arch="qwen35moe", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),  # hybrid
    "qwen3next": BASE.with_(arch="qwen3next", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),  # hybrid
    "deepseek32": BASE.with_(arch="deepseek32"),  # MLA + DSA lightning indexer
    "glm-dsa": BASE.with_(arch="glm-dsa"),
    # hash-routed layer 0, compressed attention (ratios 4 with the indexer, 128), hyper-connections, sinks
    "deepseek4": BASE.with_(arch="deepseek4"),
}


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    d = tmp_path_factory.mktemp("arch-models")
    return {arch: write_model(spec, d / f"tiny-{arch}.gguf") for arch, spec in SPECS.items()}


def test_generated_models_carry_each_architectures_features(arch_models: dict[str, SynthModel]) -> None:
    gpt = open_local(arch_models["gpt-oss"].path)
    assert gpt.tensors["blk.0.ffn_up_exps.weight"].type.name == "MXFP4"
    assert gpt.tensors["blk.0.attn_sinks.weight"].role is Role.ATTENTION
    assert gpt.hparams.swa_layers == (True, False) * 3
    glm = open_local(arch_models["glm4moe"].path)
    assert glm.hparams.n_layer == 7 and glm.hparams.n_layer_nextn == 1
    assert glm.tensors["blk.6.nextn.eh_proj.weight"].role is Role.MTP
    v4 = open_local(arch_models["deepseek4"].path)
    assert v4.tensors["blk.0.ffn_gate_tid2eid.weight"].type.name == "I32"
    assert v4.hparams.kv_compress == (0, 4, 128, 4, 128, 4)
    assert v4.tensors["blk.1.indexer_compressor_kv.weight"].role is Role.INDEXER
    q35 = open_local(arch_models["qwen35moe"].path)
    assert q35.hparams.recurrent_layers == (True, True, True, False) * 2
    assert q35.tensors["blk.0.ssm_out.weight"].role is Role.RECURRENT


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_each_architecture_loads_generates_and_verifies(
    arch: str,
    arch_models: dict[str, SynthModel],
    env: dict[str, str],  # noqa: F811
    running: list[RunningRunq],  # noqa: F811
) -> None:
    r, _, out, answer = serve_verified(arch_models[arch].path, env, running)
    assert "on the CPU" in out
    assert answer["usage"]["completion_tokens"] > 0  # type: ignore[index]
    r.proc.send_signal(signal.SIGINT)
    code, _, err = r.finish()
    assert code == 130, err
