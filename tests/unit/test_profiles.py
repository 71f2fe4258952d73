"""The catalog of MoE profiles: facts per profile, estimates per quant, and what fits which machine."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import Profile, load_profiles, require_profile
from launcher.catalog.sources import profile_sources
from launcher.errors import DoesNotFitError
from launcher.machine.spec import CPU, GPU, Machine
from launcher.model.arch_shapes import ARCHS
from launcher.model.tensors import Role
from launcher.plan.choose import choose
from launcher.plan.kv_cache import kv_layout
from launcher.plan.types import Request
from launcher.units import GiB

PROFILES = {p.name: p for p in load_profiles()}
FAMILIES = {
    "DeepSeek-V3.x": ("deepseek-v3.1", "deepseek-v3.2"),
    "DeepSeek-V4-Flash": ("deepseek-v4-flash",),
    "Kimi-K2.x": ("kimi-k2.5", "kimi-k2-thinking", "kimi-k2-instruct"),
    "Qwen3.5/3.6 MoE": ("qwen3.5-397b-a17b", "qwen3.5-122b-a10b", "qwen3.6-35b-a3b"),
    "GLM-4.x/5.x": ("glm-4.7", "glm-4.7-flash", "glm-5.2"),
    "gpt-oss-120b": ("gpt-oss-120b",),
    "gpt-oss-20b": ("gpt-oss-20b",),
    "MiniMax-M2.x": ("minimax-m2.7",),
    "Qwen3-235B-A22B": ("qwen3-235b-a22b-2507",),
    "Qwen3-Coder": ("qwen3-coder-480b",),
    # late 2026 (landscape-2026-12 §5)
    "Qwen3.8-Flash-Next": ("qwen3.8-flash-next",),
    "Kimi-K3": ("kimi-k3",),
    "GLM-5.3": ("glm-5.3", "glm-5.3-flash"),
    "MiniMax-M3": ("minimax-m3",),
    "DeepSeek-V4 (0731, Pro)": ("deepseek-v4-flash-0731", "deepseek-v4-pro"),
    "Nemotron-3": ("nemotron-3-ultra", "nemotron-3.5-lightning"),
    "MoE for 16-24 GiB cards": ("gemma-4-26b-a4b", "nemotron-3.5-lightning", "mistral-small-4"),
}
QUANTS = [(p.name, q.name) for p in PROFILES.values() for q in p.quants]


def test_at_least_16_profiles_covering_the_families() -> None:
    assert len(PROFILES) >= 16
    for family, names in FAMILIES.items():
        assert all(n in PROFILES for n in names), family
    assert {p.arch.name for p in PROFILES.values()} == set(ARCHS)  # every architecture runq knows has a profile


@pytest.mark.parametrize(("name", "quant"), QUANTS)
def test_estimate_within_3_percent_of_the_published_size(name: str, quant: str) -> None:
    p = PROFILES[name]
    q = p.quant(quant)
    e = estimate(p, q)
    assert e.tensors.total_bytes + e.header_bytes == pytest.approx(q.size_bytes, rel=0.03)
    assert not [t.name for t in e.tensors.tensors if t.role is Role.UNKNOWN]
    assert e.tensors.expert_layers  # every profile is a MoE
    by_role = e.tensors.bytes_by_role()  # lazy lookup tables (a PLE table is 26-41 % of a file) aside
    assert by_role[Role.ROUTED_EXPERT] > 0.6 * (e.tensors.total_bytes - by_role.get(Role.LAZY_TABLE, 0))
    if q.expert_type:  # native expert type (gpt-oss MXFP4) kept whatever the quant
        assert {t.type.name for t in e.tensors.tensors if t.is_expert and t.name.endswith(".weight")} == {q.expert_type}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_shape_adds_up_to_the_published_parameter_count(name: str) -> None:
    p = PROFILES[name]
    e = estimate(p, p.quants[0])
    params = sum(math.prod(t.shape) for t in e.tensors.tensors) / 1e9
    assert p.params_b is not None and p.active_b is not None  # every packaged profile says what is published
    assert params == pytest.approx(p.params_b, rel=0.03)


@pytest.mark.parametrize(
    ("name", "tensors", "types"),
    [
        ("deepseek-v3.1", 1086, {"F32": 361}),  # models.md §2: split.tensors.count and the f32 histogram
        ("kimi-k2-instruct", 1096, {}),  # models.md §1.3
        ("qwen3-235b-a22b-2507", 1131, {}),  # models.md §1.4
        ("qwen3-coder-480b", 747, {}),  # models.md §1.5
        ("glm-4.6", 1759, {}),  # models.md §1.7 (92 layers + the NextN layer)
        ("gpt-oss-120b", 687, {"F32": 433, "MXFP4": 108}),  # models.md §1.8 (the F16 file's histogram)
    ],
)
def test_tensor_lists_match_real_files(name: str, tensors: int, types: dict[str, int]) -> None:
    p = PROFILES[name]
    e = estimate(p, p.quants[-1])
    assert len(e.tensors) == tensors
    hist = e.tensors.type_histogram()
    for t, n in types.items():
        assert hist[t] == n


def test_facts_of_the_newer_architectures() -> None:
    v4 = estimate(PROFILES["deepseek-v4-flash"], PROFILES["deepseek-v4-flash"].quants[0]).tensors
    assert v4["blk.0.ffn_gate_tid2eid.weight"].type.name == "I32"  # hash-routed first 3 layers
    assert "blk.3.ffn_gate_tid2eid.weight" not in {t.name for t in v4.tensors}
    assert v4["blk.2.hc_attn_fn.weight"].role is Role.HYPER_CONNECTION
    assert v4["blk.2.indexer_compressor_kv.weight"].role is Role.INDEXER
    assert v4["blk.2.attn_compressor_kv.weight"].role is Role.ATTENTION
    glm = estimate(PROFILES["glm-4.6"], PROFILES["glm-4.6"].quants[0]).tensors
    assert glm["blk.92.nextn.eh_proj.weight"].role is Role.MTP
    assert glm.expert_layers == tuple(range(3, 93))  # the NextN layer has experts too (in the file)
    q36 = estimate(PROFILES["qwen3.6-35b-a3b"], PROFILES["qwen3.6-35b-a3b"].quants[0]).tensors
    assert q36["blk.0.ssm_out.weight"].role is Role.RECURRENT
    assert "blk.3.attn_q.weight" in {t.name for t in q36.tensors}  # every 4th layer is full attention
    assert q36["blk.0.ffn_gate_inp_shexp.weight"].role is Role.SHARED_EXPERT
    v32 = estimate(PROFILES["deepseek-v3.2"], PROFILES["deepseek-v3.2"].quants[0]).tensors
    assert v32["blk.0.indexer.attn_q_b.weight"].role is Role.INDEXER


def test_facts_of_the_late_2026_profiles() -> None:
    q38 = estimate(PROFILES["qwen3.8-flash-next"], PROFILES["qwen3.8-flash-next"].quant("UD-Q4_K_XL")).tensors
    assert q38["per_layer_token_embd.weight"].role is Role.LAZY_TABLE  # landscape-2026-12 §5: 28.8 GB table ...
    assert q38.lazy_table_bytes() == pytest.approx(28.8e9, rel=0.01)
    assert q38.expert_bytes() == pytest.approx(77.0e9, rel=0.03)  # ... beside 77.0 GB of experts
    k3 = PROFILES["kimi-k3"]
    hp = k3.arch.hparams()
    assert sum(hp.recurrent_layers) == 69 and sum(1 for h in hp.n_head_kv if h) == 24  # 69 KDA + 24 MLA
    q1 = Counter(t.type.name for t in estimate(k3, k3.quant("UD-Q1_0")).tensors.tensors if t.is_expert)
    assert set(q1) == {"Q1_0", "IQ1_S"} and q1["Q1_0"] > q1["IQ1_S"]  # about 1.2 bits: mostly ggml's Q1_0
    assert {t.type.name for t in estimate(k3, k3.quant("UD-Q4_K_XL")).tensors.tensors if t.is_expert} == {"MXFP4"}
    flash = PROFILES["glm-5.3-flash"].arch.hparams()
    assert sum(flash.recurrent_layers) == 34 and sum(flash.indexer_layers) == 11 and flash.n_layer_nextn == 1
    assert flash.key_length == 512 and flash.indexer_cache_k == 3 * 128  # nope MLA; k-pool key, gate, pooled value
    ultra = PROFILES["nemotron-3-ultra"].arch.hparams()
    assert sum(ultra.recurrent_layers) == 48 and sum(1 for b in kv_layout(ultra).per_layer if b) == 8 + 1  # + MTP
    g4 = PROFILES["gemma-4-26b-a4b"].arch.hparams()
    assert sum(g4.swa_layers) == 25 and (g4.key_length, g4.key_length_swa) == (512, 256)
    mm = PROFILES["minimax-m3"].arch.hparams()
    assert sum(mm.indexer_layers) == 59 and (mm.indexer_cache_k, mm.indexer_cache_v) == (128, 128)
    pro = estimate(PROFILES["deepseek-v4-pro"], PROFILES["deepseek-v4-pro"].quants[0])
    assert pro.tensors.expert_layers == tuple(range(61)) and pro.hparams.n_expert == 384
    for name in ("glm5-next", "k3", "v4-pro", "gemma4", "nemotron", "mistral4", "qwen3.8-flash", "v4-flash-0731"):
        assert require_profile(name).name in PROFILES


def test_kv_cache_per_architecture() -> None:
    def per_token(name: str, ctx: int = 131072) -> float:
        hp = PROFILES[name].arch.hparams()
        return kv_layout(hp).bytes_for(ctx) / ctx

    # MLA, V-less: 576 x 2 B x 61 layers (models.md §4)
    assert per_token("deepseek-v3.1") == 70272
    # gpt-oss-120b: 18 full layers x 2,048 B per token (36,864 B, models.md §4) + 18 sliding-window layers of
    # 768 cells (window 128 + ubatch 512, padded to 256)
    hp = PROFILES["gpt-oss-120b"].arch.hparams()
    assert kv_layout(hp).bytes_for(131072) == 36864 * 131072 + 18 * 2048 * 768
    assert sum(hp.swa_layers) == 18 and not hp.swa_layers[1]
    # GLM-4.6: 92 layers x 4096 B; the NextN layer gets no cache (models.md §4: 376,832 B per token)
    assert per_token("glm-4.6") == 376832
    # Qwen3.6-35B: KV in 10 of 40 layers (2 KV heads x 256 x 2 x 2 B), a fixed recurrent state in the other 30
    hp = PROFILES["qwen3.6-35b-a3b"].arch.hparams()
    kv = kv_layout(hp)
    assert sum(1 for b in kv.per_layer if b) == 10 and kv.per_token == 10 * 2048
    assert kv.bytes_for(1) - kv.per_token == 30 * hp.recurrent_state_bytes > 0
    # DeepSeek-V4: every layer a 128-token window; compressed layers also keep ctx / ratio cells
    hp = PROFILES["deepseek-v4-flash"].arch.hparams()
    kv = kv_layout(hp)
    assert kv.per_token < 512 * 2 * 43 / 4 and kv.window_cells == 768
    # ... in GGML_PAD(ctx / ratio, 256) cells, and its ratio-4 layers the indexer keys too (llama_kv_cache_dsv4):
    # 43 x 768 window cells x 1 KiB + 21 x 1,024 x (1,024 + 256) B + 20 x 256 x 1 KiB + f32 compressor states
    states = 21 * (2 * 8 * 2 * (512 + 128) * 4) + 20 * (2 * 128 * 512 * 4)
    assert kv.bytes_for(4096) == 43 * 768 * 1024 + 21 * 1024 * 1280 + 20 * 256 * 1024 + states
    # GLM-5.2: MLA 576 x 2 B in 78 layers; indexer keys (128 x 2 B) only in the 21 layers that run an indexer
    assert per_token("glm-5.2") == 78 * 1152 + 21 * 256
    assert per_token("deepseek-v3.2") == 61 * (1152 + 256)  # DeepSeek-V3.2: an indexer in every layer


def test_sampling_per_profile_and_mode() -> None:
    for p in PROFILES.values():  # runq's own settings, or none and the GGUF's (general.sampling.*) say so
        assert p.sampling.temperature is not None or "the GGUF's own defaults apply" in p.notes, p.name
        assert p.default_ctx <= p.arch.context_length
    q35 = PROFILES["qwen3.5-397b-a17b"]
    assert q35.modes["non-thinking"].presence_penalty == 1.5
    assert (q35.modes["thinking"].temperature, q35.modes["thinking"].top_p) == (1.0, 0.95)
    assert PROFILES["qwen3-coder-480b"].sampling.repeat_penalty == 1.05
    assert (PROFILES["gpt-oss-120b"].sampling.top_k, PROFILES["gpt-oss-120b"].sampling.top_p) == (0, 1.0)
    assert PROFILES["glm-4.6"].sampling.top_k == 40
    assert PROFILES["minimax-m2.7"].build_quirks == ["cuda_force_cublas"]


def test_confirmed_means_read_from_the_hub() -> None:
    for p in PROFILES.values():
        for q in p.quants:
            assert q.confirmed == (q.size_source == "hub"), (p.name, q.name)
    assert PROFILES["gpt-oss-120b"].quant("F16").size_bytes == 65_369_017_728
    assert PROFILES["qwen3-30b-a3b-2507"].quant("UD-Q4_K_XL").size_bytes == 17_690_497_440


# --- what fits which machine -------------------------------------------------------------------------


def _machine(gpu_gib: int, ram_gib: int) -> Machine:
    gpus = (GPU(0, "GPU (described)", gpu_gib * GiB, gpu_gib * GiB),)
    return Machine(
        gpus=gpus,
        ram_total_bytes=ram_gib * GiB,
        ram_available_bytes=ram_gib * GiB,
        cpu=CPU(physical_cores=16, logical_cores=16),
    )


MACHINES = [(24, 64), (24, 128), (24, 256), (80, 512)]


def _best(p: Profile, gpu: int, ram: int) -> int:
    """Size of the quant chosen on this machine; 0 when none fits."""
    try:
        c = choose(p.display_name, _machine(gpu, ram), profile_sources(p), Request(ctx=p.default_ctx))
    except DoesNotFitError:
        return 0
    return c.chosen.source.size_bytes


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_model_plans_and_a_bigger_machine_never_gets_a_smaller_quant(name: str) -> None:
    p = PROFILES[name]
    sizes = [_best(p, g, r) for g, r in MACHINES]
    assert sizes == sorted(sizes), sizes
    if p.quants_by_size()[0].size_bytes < 500 * GiB:
        assert sizes[-1] > 0  # everything in the catalog fits 80 GiB + 512 GiB ...
    else:  # ... but DeepSeek-V4-Pro, whose MXFP4 experts alone are 822 GB: on 80 GiB + 1 TiB
        assert sizes[-1] == 0 and _best(p, 80, 1024) > 0


def test_a_24_gib_64_gib_home_server_fits_several_models() -> None:
    fitting = [p.name for p in PROFILES.values() if _best(p, 24, 64)]
    assert len(fitting) >= 5
    assert "gpt-oss-120b" in fitting


def test_aliases_and_names_are_unique() -> None:
    seen: dict[str, str] = {}
    for p in PROFILES.values():
        for n in [p.name, *p.aliases]:
            assert n not in seen, f"{n} names both {seen.get(n)} and {p.name}"
            seen[n] = p.name
    assert require_profile("kimi").name == "kimi-k2.5"
    assert require_profile("qwen3.5").name == "qwen3.5-397b-a17b"
    assert require_profile("minimax").name == "minimax-m2.7"


def test_runq_models_lists_the_catalog_for_the_described_machine() -> None:
    import json

    from tests.helpers import runq_proc

    described = ("models", "--gpu", "24GiB", "--ram", "64GiB")
    r = runq_proc(*described, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) >= 16 and {x["name"] for x in rows} >= {n for names in FAMILIES.values() for n in names}
    fitting = [x for x in rows if x["fits"]]
    assert len(fitting) >= 5 and "gpt-oss-120b" in {x["name"] for x in fitting}
    assert rows[: len(fitting)] == fitting  # what fits first
    gpt = next(x for x in rows if x["name"] == "gpt-oss-120b")
    assert (gpt["params_b"], gpt["active_params_b"], gpt["architecture"]) == (117.0, 5.1, "gpt-oss")
    assert gpt["smallest"]["quant"] == "UD-Q4_K_XL" and gpt["largest"] == {"quant": "F16", "size_bytes": 65_369_017_728}
    assert gpt["best"]["quant"] == "F16" and gpt["on_disk"] == "no"
    assert next(x for x in rows if x["name"] == "kimi-k2.5")["best"] is None
    text = runq_proc(*described).stdout
    assert "gpt-oss-120b" in text and "60.9 GiB" in text and " GB" not in text  # binary units, like the rest of runq
    assert f"{len(fitting)} of {len(rows)} fit" in text


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_template_is_the_ggufs_own_or_a_fixed_file_that_renders(name: str) -> None:
    import json as _json

    import jinja2

    p = PROFILES[name]
    if p.template is None:  # the GGUF's own (Unsloth's uploads carry the documented fixes)
        return
    env = jinja2.Environment(undefined=jinja2.Undefined)
    env.filters["tojson"] = lambda v: _json.dumps(v, ensure_ascii=False)
    out = env.from_string(p.template_path().read_text()).render(  # type: ignore[union-attr]
        messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True, bos_token=""
    )
    assert "Hi" in out
