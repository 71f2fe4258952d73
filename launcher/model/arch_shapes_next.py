"""Tensor lists of the late-2026 MoE architectures, as the pinned llama.cpp's loaders create them.

Pure: no I/O. One function per `src/models/<arch>.cpp` `load_arch_tensors` at 0c1e570:
qwen4exp.cpp (Qwen3.8-Flash-Next), kimi-k3.cpp, glm5-next.cpp (GLM-5.3-Flash),
minimax-m3.cpp, nemotron-h.cpp (nemotron_h_moe reuses its loader), gemma4.cpp.
Required tensors, and the optional ones the converters (`conversion/*.py`) write.
Shapes are ggml `ne` order. The per-layer kinds (recurrent or attention, which
layer has the PLE module) come from `layer_kinds`, the same rule hparams.py uses.
"""

from __future__ import annotations

from launcher.model.shape import Shape, TensorList

# nemotron_h hybrid_override_pattern letters (conversion/nemotron.py): mamba2, attention, MoE, dense MLP
MAMBA, ATTN, MOE, MLP = "M", "*", "E", "-"
KDA = "K"  # kimi-k3 / glm5-next: a Kimi Delta Attention (recurrent) layer; "A" is MLA attention


def layer_kinds(s: Shape) -> str:
    """One letter per trunk layer. Hybrids without an explicit pattern: every full_attn_interval-th layer is
    attention (qwen4exp's loader default 4), the others linear."""
    if s.layer_pattern:
        return s.layer_pattern[: s.n_layer].ljust(s.n_layer, "A")
    if s.arch in ("qwen4exp", "kimi-k3", "glm5-next"):
        k = s.full_attn_interval or 4
        return "".join("A" if (il + 1) % k == 0 else KDA for il in range(s.n_layer))
    return "A" * s.n_layer


def tensor_shapes(s: Shape) -> TensorList:
    e = s.n_embd
    out: TensorList = [("token_embd.weight", (e, s.n_vocab))]
    build = {
        "qwen4exp": _qwen4exp,
        "kimi-k3": _kimi_k3,
        "glm5-next": _glm5_next,
        "minimax-m3": _minimax_m3,
        "nemotron_h_moe": _nemotron_h,
        "gemma4": _gemma4,
    }[s.arch]
    return out + build(s)


def _experts(s: Shape, *, gate: bool = True, width: int = 0, bias: bool = True) -> TensorList:
    """Router, its selection bias, and the routed experts (width: the experts' input, latent MoE)."""
    e, x, fe, w = s.n_embd, s.n_expert, s.n_ff_exp, width or s.n_embd
    out: TensorList = [("ffn_gate_inp.weight", (e, x))]
    if bias:
        out.append(("exp_probs_b.bias", (x,)))
    if gate and s.fused_gate_up:
        out.append(("ffn_gate_up_exps.weight", (w, 2 * fe, x)))
    elif gate:
        out += [("ffn_gate_exps.weight", (w, fe, x)), ("ffn_up_exps.weight", (w, fe, x))]
    else:
        out.append(("ffn_up_exps.weight", (w, fe, x)))
    out.append(("ffn_down_exps.weight", (fe, w, x)))
    return out


def _shared(s: Shape, width: int, *, gate: bool = True) -> TensorList:
    e = s.n_embd
    out: TensorList = [("ffn_gate_shexp.weight", (e, width))] if gate else []
    return [*out, ("ffn_down_shexp.weight", (width, e)), ("ffn_up_shexp.weight", (e, width))]


def _dense(s: Shape) -> TensorList:
    e, f = s.n_embd, s.n_ff
    return [("ffn_gate.weight", (e, f)), ("ffn_down.weight", (f, e)), ("ffn_up.weight", (e, f))]


def _in_block(i: int, tensors: TensorList) -> TensorList:
    return [(f"blk.{i}.{n}", sh) for n, sh in tensors]


# --- qwen4exp: gated DeltaNet + QSA attention, low-rank hyper-connections, one PLE n-gram layer ---------


def _hc_low_rank(prefix: str, s: Shape, *, inject: bool = True) -> TensorList:
    e, hc, lr = s.n_embd, s.hc_mult, s.hc_low_rank
    out: TensorList = [
        (f"{prefix}_norm.weight", (e, hc)),
        (f"{prefix}_down.weight", (hc * e, lr)),
        (f"{prefix}_up.weight", (lr, hc * e)),
    ]
    return out + ([(f"{prefix}_inject.weight", (hc * e, hc))] if inject else [])


def _qwen4exp(s: Shape) -> TensorList:
    e, hc = s.n_embd, s.hc_mult
    out = _hc_low_rank("output_hc", s, inject=False)  # no output_norm: the final mixer carries it
    out.append(("output.weight", (e, s.n_vocab)))
    if s.ple_layer >= 0:  # read a few rows per token (TENSOR_READ_LAZY)
        out.append(("per_layer_token_embd.weight", (s.n_embd_per_layer, s.ple_rows)))
    kinds = layer_kinds(s)
    hd, isz = s.head_dim, s.indexer_head_size
    key_dim, value_dim = s.ssm_d_state * s.ssm_n_group, s.ssm_d_state * s.ssm_dt_rank
    for i in range(s.n_layer):
        t = _hc_low_rank("hc_attn", s) + _hc_low_rank("hc_ffn", s)
        if kinds[i] != KDA:
            t += [
                ("attn_q.weight", (e, 2 * hd * s.n_head)),  # query and output gate, interleaved per head
                ("attn_k.weight", (e, hd * s.n_head_kv)),
                ("attn_v.weight", (e, hd * s.n_head_kv)),
                ("attn_output.weight", (hd * s.n_head, e)),
                ("attn_q_norm.weight", (hd,)),
                ("attn_k_norm.weight", (hd,)),
                ("indexer.q_proj.weight", (e, s.indexer_n_head * isz)),
                ("indexer.k_proj.weight", (e, isz)),
                ("indexer.q_norm.weight", (isz,)),
                ("indexer.k_norm.weight", (isz,)),
            ]
        else:
            t += [
                ("attn_qkv.weight", (e, 2 * key_dim + value_dim)),
                ("attn_gate.weight", (e, value_dim)),
                ("ssm_conv1d.weight", (s.ssm_d_conv, 2 * key_dim + value_dim)),
                ("ssm_dt.bias", (s.ssm_dt_rank,)),
                ("ssm_a", (s.ssm_dt_rank,)),
                ("ssm_beta.weight", (e, s.ssm_dt_rank)),
                ("ssm_alpha.weight", (e, s.ssm_dt_rank)),
                ("ssm_norm.weight", (s.ssm_d_state,)),
                ("ssm_out.weight", (value_dim, e)),
            ]
        if i == s.ple_layer:
            t += [
                ("ple_key.weight", (e, hc * e)),
                ("ple_value.weight", (e, e)),
                ("ple_norm_key.weight", (e, hc)),
                ("ple_norm_query.weight", (e, hc)),
                ("ple_norm_conv.weight", (e, hc)),
                ("ple_conv1d.weight", (s.ple_conv_kernel, hc * e)),
            ]
        t += _experts(s, bias=False)
        t.append(("ffn_gate_inp_shexp.weight", (e,)))
        t += _shared(s, s.n_ff_shexp or s.n_ff_exp)
        out += _in_block(i, t)
    return out


# --- kimi-k3 and glm5-next: KDA linear attention + MLA, latent MoE / mHC -----------------------------------


def _kda(s: Shape, *, full_rank_gate: bool) -> TensorList:
    e, hd, nh = s.n_embd, s.kda_head_dim, s.n_head
    d_inner = hd * nh
    out: TensorList = [(f"ssm_conv1d_{p}.weight", (s.ssm_d_conv, 1, d_inner)) for p in "qkv"]
    out += [(f"attn_{p}.weight", (e, d_inner)) for p in "qkv"]
    out += [
        ("ssm_f_a.weight", (e, hd)),
        ("ssm_f_b.weight", (hd, d_inner)),
        ("ssm_beta.weight", (e, nh)),
        ("ssm_a", (nh,)),
        ("ssm_dt.bias", (d_inner,)),
    ]
    if full_rank_gate:  # kimi-k3: one full-rank gate instead of kimi-linear's g_a / g_b
        out.append(("ssm_g.weight", (e, d_inner)))
    else:
        out += [("ssm_g_a.weight", (e, hd)), ("ssm_g_b.weight", (hd, d_inner))]
    return [*out, ("ssm_norm.weight", (hd,)), ("attn_output.weight", (d_inner, e))]


def _mla(s: Shape, *, output_gate: bool = False) -> TensorList:
    e, nh, kv, ql = s.n_embd, s.n_head, s.kv_lora_rank, s.q_lora_rank
    k_mla = s.qk_nope_dim + s.qk_rope_dim
    out: TensorList = [
        ("attn_q_a_norm.weight", (ql,)),
        ("attn_kv_a_norm.weight", (kv,)),
        ("attn_q_a.weight", (e, ql)),
        ("attn_q_b.weight", (ql, nh * k_mla)),
        ("attn_kv_a_mqa.weight", (e, kv + s.qk_rope_dim)),
        ("attn_k_b.weight", (s.qk_nope_dim, kv, nh)),
        ("attn_v_b.weight", (kv, s.v_head_dim, nh)),
    ]
    if output_gate:  # kimi-k3: sigmoid gate on the attention output
        out.append(("attn_gate.weight", (e, nh * s.v_head_dim)))
    return [*out, ("attn_output.weight", (nh * s.v_head_dim, e))]


def _kimi_k3(s: Shape) -> TensorList:
    e = s.n_embd
    out: TensorList = [("output_norm.weight", (e,)), ("output.weight", (e, s.n_vocab))]
    if s.attn_res:
        out.append(("output_res_score.weight", (e,)))
    kinds = layer_kinds(s)
    lat = s.expert_latent or e
    for i in range(s.n_layer):
        t: TensorList = [("attn_norm.weight", (e,)), ("ffn_norm.weight", (e,))]
        if s.attn_res:
            t += [("attn_res_score.weight", (e,)), ("ffn_res_score.weight", (e,))]
        t += _kda(s, full_rank_gate=True) if kinds[i] == KDA else _mla(s, output_gate=True)
        if i < s.n_dense_lead:
            t += _dense(s)
        else:
            t += _experts(s, width=lat)
            if s.expert_latent:
                t += [
                    ("ffn_routed_down.weight", (e, lat)),
                    ("ffn_routed_up.weight", (lat, e)),
                    ("ffn_routed_norm.weight", (lat,)),
                ]
            t += _shared(s, s.n_ff_exp * max(s.n_expert_shared, 1))
        out += _in_block(i, t)
    return out


def _glm5_indexer(s: Shape) -> TensorList:
    e, ih, isz = s.n_embd, s.indexer_n_head, s.indexer_head_size
    return [
        ("indexer.k_norm.weight", (isz,)),
        ("indexer.k_norm.bias", (isz,)),
        ("indexer.proj.weight", (e, ih)),
        ("indexer.attn_k.weight", (e, isz)),
        ("indexer.attn_q_b.weight", (s.q_lora_rank, ih * isz)),
        ("indexer_compressor_gate.weight", (e, isz)),
        ("indexer_compressor_ape.weight", (isz, s.indexer_kpool)),
    ]


def _glm5_next(s: Shape) -> TensorList:
    e, hc = s.n_embd, s.hc_mult
    mix = (2 + hc) * hc
    out: TensorList = [("output_norm.weight", (e,)), ("output.weight", (e, s.n_vocab))]
    kinds = layer_kinds(s)
    for i in range(s.n_layer_all):
        t: TensorList = [("attn_norm.weight", (e,)), ("ffn_norm.weight", (e,))]
        if i < s.n_layer:  # manifold hyper-connections, as deepseek4's
            for where in ("attn", "ffn"):
                t += [(f"hc_{where}_fn.weight", (hc * e, mix)), (f"hc_{where}_base.weight", (mix,))]
                t.append((f"hc_{where}_scale.weight", (3,)))
        if i < s.n_layer and kinds[i] == KDA:
            t += _kda(s, full_rank_gate=False)
        else:  # DSA: MLA with a k-pool lightning indexer (the NextN block too)
            t += _mla(s) + _glm5_indexer(s)
        t += _dense(s) if i < s.n_dense_lead else _experts(s) + _shared(s, s.n_ff_exp * max(s.n_expert_shared, 1))
        if i >= s.n_layer:
            t += [
                ("nextn.eh_proj.weight", (2 * e, e)),
                ("nextn.enorm.weight", (e,)),
                ("nextn.hnorm.weight", (e,)),
                ("nextn.shared_head_norm.weight", (e,)),
            ]
        out += _in_block(i, t)
    return out


# --- minimax-m3: GQA + MSA block-sparse indexer in the MoE layers -------------------------------------------


def _gqa(s: Shape, head_dim: int = 0, n_head_kv: int = 0) -> TensorList:
    e, hd, kv = s.n_embd, head_dim or s.head_dim, n_head_kv or s.n_head_kv
    return [
        ("attn_q.weight", (e, hd * s.n_head)),
        ("attn_k.weight", (e, hd * kv)),
        ("attn_v.weight", (e, hd * kv)),
        ("attn_output.weight", (hd * s.n_head, e)),
    ]


def _minimax_m3(s: Shape) -> TensorList:
    e, hd, isz = s.n_embd, s.head_dim, s.indexer_head_size
    out: TensorList = [("output_norm.weight", (e,)), ("output.weight", (e, s.n_vocab))]
    for i in range(s.n_layer):
        t = [
            *_gqa(s),
            ("attn_norm.weight", (e,)),
            ("attn_q_norm.weight", (hd,)),  # one head_dim vector for every head
            ("attn_k_norm.weight", (hd,)),
            ("ffn_norm.weight", (e,)),
        ]
        if i < s.n_dense_lead:
            t += _dense(s)
        else:
            t += _experts(s) + _shared(s, s.n_ff_exp * max(s.n_expert_shared, 1))
            t += [
                ("indexer.q_proj.weight", (e, s.indexer_n_head * isz)),
                ("indexer.k_proj.weight", (e, isz)),
                ("indexer.q_norm.weight", (isz,)),
                ("indexer.k_norm.weight", (isz,)),
            ]
        out += _in_block(i, t)
    return out


# --- nemotron_h_moe: mamba2 / attention / latent MoE layers, each a single block --------------------------


def _mamba2(s: Shape) -> TensorList:
    e, di, ng, ds, nh = s.n_embd, s.ssm_d_inner, s.ssm_n_group, s.ssm_d_state, s.ssm_dt_rank
    conv = di + 2 * ng * ds
    return [
        ("ssm_in.weight", (e, 2 * di + 2 * ng * ds + nh)),
        ("ssm_conv1d.weight", (s.ssm_d_conv, conv)),
        ("ssm_conv1d.bias", (conv,)),
        ("ssm_dt.bias", (nh,)),
        ("ssm_a", (1, nh)),
        ("ssm_d", (1, nh)),
        ("ssm_norm.weight", (di // ng, ng)),
        ("ssm_out.weight", (di, e)),
    ]


def _nemotron_moe(s: Shape) -> TensorList:
    """Non-gated (relu^2) routed experts in the latent space, and a shared expert at n_embd."""
    lat = s.expert_latent or s.n_embd
    out = _experts(s, gate=False, width=lat)
    if s.expert_latent:
        out[2:2] = [("ffn_latent_down.weight", (s.n_embd, lat)), ("ffn_latent_up.weight", (lat, s.n_embd))]
    return out + _shared(s, s.n_ff_shexp or s.n_ff_exp, gate=False)


def _nemotron_h(s: Shape) -> TensorList:
    e = s.n_embd
    out: TensorList = [("output_norm.weight", (e,)), ("output.weight", (e, s.n_vocab))]
    kinds = layer_kinds(s)
    for i in range(s.n_layer):
        t: TensorList = [("attn_norm.weight", (e,))]
        kind = kinds[i]
        if kind == MAMBA:
            t += _mamba2(s)
        elif kind == MOE:
            t += _nemotron_moe(s)
        elif kind == MLP:
            t += [("ffn_down.weight", (s.n_ff, e)), ("ffn_up.weight", (e, s.n_ff))]
        else:
            t += _gqa(s)
        out += _in_block(i, t)
    for i in range(s.n_layer, s.n_layer_all):  # the MTP block: attention and MoE in one layer
        t = [
            ("nextn.enorm.weight", (e,)),
            ("nextn.hnorm.weight", (e,)),
            ("nextn.eh_proj.weight", (2 * e, e)),
            ("nextn.shared_head_norm.weight", (e,)),
            ("attn_norm.weight", (e,)),
            *_gqa(s),
            ("post_attention_norm.weight", (e,)),
            *_nemotron_moe(s),
        ]
        out += _in_block(i, t)
    return out


# --- gemma4: iSWA with its own sliding-window head size, dense FFN beside the experts ----------------------


def gemma4_is_swa(s: Shape, il: int) -> bool:
    n = s.swa_pattern or 6
    return il % n < n - 1


def _gemma4(s: Shape) -> TensorList:
    e, pl, nl = s.n_embd, s.n_embd_per_layer, s.n_layer
    out: TensorList = []  # output.weight absent: tied to token_embd
    if pl:
        out += [
            ("per_layer_token_embd.weight", (pl * nl, s.n_vocab)),  # read a few rows per token (TENSOR_READ_LAZY)
            ("per_layer_model_proj.weight", (e, pl * nl)),
            ("per_layer_proj_norm.weight", (pl,)),
        ]
    out.append(("output_norm.weight", (e,)))
    out.append(("rope_freqs.weight", (s.head_dim // 2,)))  # proportional rope of the full layers, shared
    for i in range(nl):
        swa = gemma4_is_swa(s, i)
        hd = s.head_dim_swa if swa else s.head_dim
        t: TensorList = [("attn_norm.weight", (e,))]
        t += _gqa(s, hd, s.n_head_kv_swa if swa else s.n_head_kv)
        t += [
            ("attn_q_norm.weight", (hd,)),
            ("attn_k_norm.weight", (hd,)),
            ("post_attention_norm.weight", (e,)),
            ("layer_output_scale.weight", (1,)),
            ("ffn_norm.weight", (e,)),
            *_dense(s),  # the "shared expert": a plain FFN every layer runs
            ("post_ffw_norm.weight", (e,)),
        ]
        t += _experts(s, bias=False)
        t += [
            ("ffn_gate_inp.scale", (e,)),
            ("pre_ffw_norm_2.weight", (e,)),
            ("post_ffw_norm_1.weight", (e,)),
            ("post_ffw_norm_2.weight", (e,)),
        ]
        if pl:
            t += [("inp_gate.weight", (e, pl)), ("proj.weight", (pl, e)), ("post_norm.weight", (e,))]
        out += _in_block(i, t)
    return out
