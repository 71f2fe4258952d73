"""The memory and speed model: every constant the planner uses, each with where it came from.

Pure: no I/O. Change a number here when a measurement says so (and say which
measurement); nothing else in the planner hard-codes a size or a speed.
Sources: docs/reference/llama-cpp.md (measurements at llama.cpp 0c1e570)
and models.md §4. The KV cache is kv_cache.py; the serving server's own (slots, lazy tables) serving.py.
"""

from __future__ import annotations

from launcher.model.hparams import HParams
from launcher.plan.kv_cache import DSV4_CSA_RATIO
from launcher.units import GiB, MiB

# --- margins ---------------------------------------------------------------------------------
# llama.cpp's own fit keeps 1024 MiB free per device (`-fitt` default).
GPU_MARGIN_BYTES = 1024 * MiB
# The CUDA context and cuBLAS workspace llama.cpp creates on each GPU: not in NVML's "free" before launch.
# Typical 300-600 MiB; 512 MiB for a described GPU (measured per card with a CUDA build: pipeline/fit_check.py).
CUDA_CONTEXT_BYTES = 512 * MiB
# System RAM kept for the OS, the page cache of what else runs, runq itself: the larger of these.
RAM_MARGIN_MIN_BYTES = 4 * GiB
RAM_MARGIN_FRACTION = 0.05

# --- compute buffers -------------------------------------------------------------------------
# CUDA, fa auto/on (what runq plans: it always passes `-fa auto`, and at this commit every head size the catalog
# has gets a CUDA kernel, so auto = on; the fa off rows are 5-20x higher and are not modelled). Fitted to
# bench/gpu_fit_rows.json: 200 `llama-fit-params -fitp on` rows recorded on an H200 (build 0c1e570, 2026-11-27):
# one shape per architecture (deepseek2, deepseek32, deepseek4, glm-dsa, glm4moe, gpt-oss, minimax-m2, qwen35moe,
# qwen3moe, qwen3next) x -c 4k/16k/32k/64k x -ub 512/2048, every layer on the GPU, and again with the routed
# experts on the CPU (-cmoe). Every row is linear in -ub (no constant part), so the buffer is ubatch x the bytes
# per ubatch token of its biggest phase, plus with -cmoe the expert weight the scheduler copies in (op offload).
# The graph allocator's peak is one phase's tensors plus what its reuse leaves unfilled, which moves with the
# context in steps (qwen3moe drops by a fifth at 64k, qwen35moe rises by a fifth at 32k): the fitted terms bound
# the steps from above, which the test in tests/test_llama_sizes.py checks against every row.
# Phases, in bytes per ubatch token (f32 activations, ACT_BYTES):
# - output: the f32 logits (n_vocab) plus some n_embd rows the allocator keeps beside them (GPU_ALLOC_EMBD_ROWS,
#   fitted per architecture: 1-3 for most, up to 20 for the hybrids) plus a quarter of the f16 mask;
# - attention (flash attention): the f16 KQ mask (n_kv x ubatch, live through every layer) and the f32 query and
#   output; MLA (deepseek2): the absorbed query (n_head x kv_lora_rank), the concatenated one (n_head x 576) and
#   the kv_lora_rank-wide output (fits the deepseek2 rows within 5%);
# - MoE: the mask, and the routed experts' f32 up/gate (n_expert_used x n_ff_exp each) and down (n_expert_used x
#   n_embd) results plus a few n_embd rows (GPU_MOE_EMBD_ROWS; gated-DeltaNet hybrids keep more);
# - DSA (deepseek32, glm-dsa; models/deepseek32.cpp, llama-graph.cpp build_attn with top_k): the lightning
#   indexer's f32 score row and its own f16 mask, then the -inf filled top-k mask and its sum with the MLA mask,
#   per context cell (DSA_GPU_CTX_BYTES), next to a logits-sized block, the query and 21 n_embd rows (fitted:
#   it holds for both the 128-head DeepSeek-V3.2 and the 64-head GLM-5.2); its MoE phase keeps both f16 masks
#   and 27 n_embd rows (fitted);
# - deepseek4 (compressed attention: a 128-cell window plus caches compressed 4x and 128x, so no n_kv-long
#   mask per token): the logits, 5.5 n_embd rows and 2.4 B per context cell (fitted); with -cmoe the allocator
#   keeps two copied expert tensors at 16k and above (785 + 672 MiB on the V4-Flash shape): counted always.
# Without a CUDA kernel for the head size `-fa auto` materialises the scores: n_head x ctx f32 per ubatch token
# and an f32 mask, added to the biggest phase (against the fa off rows, which force that path: +0.7% to +27%
# except deepseek4, whose compressed attention this does not model).
SCORE_BYTES = 4  # f32 attention scores per head, per ubatch token, per context token (no flash attention)
LOGIT_BYTES = 4
ACT_BYTES = 4
FA_MASK_BYTES = 2  # f16 KQ mask per ubatch token and context cell
NO_FA_MASK_BYTES = 4  # f32 mask when the scores are materialised
GPU_OUT_MASK_SHARE = 0.25
# Extra n_embd f32 rows next to the logits, (all experts on the GPU, experts on the CPU with op offload): fitted.
GPU_ALLOC_EMBD_ROWS = {
    "deepseek2": (3, 3), "deepseek32": (3, 3), "glm-dsa": (3, 3), "deepseek4": (3, 3), "gpt-oss": (3, 3),
    "minimax-m2": (2, 2), "glm4moe": (4, 20), "qwen3moe": (12, 2), "qwen3next": (9, 14), "qwen35moe": (19, 20),
}  # fmt: skip
GPU_ALLOC_EMBD_ROWS_DEFAULT = (20, 20)  # an architecture not measured on a GPU: the largest fitted
GPU_MOE_EMBD_ROWS = 3
GPU_MOE_EMBD_ROWS_HYBRID = 10  # qwen3next/qwen35moe -cmoe rows at -ub 512
DSA_GPU_CTX_BYTES = 6
DSA_GPU_EMBD_ROWS = 22
DSA_GPU_MOE_CTX_BYTES = 2  # the indexer's f16 mask, next to the MLA one
DSA_GPU_MOE_EMBD_ROWS = 27
DSV4_GPU_EMBD_ROWS = 5.5
DSV4_GPU_CTX_BYTES = 2.4
DSV4_GPU_MOE_EMBD_ROWS = 6
DSV4_OFFLOAD_COPIES = 2
# CUDA flash-attention kernels at this commit (ggml-cuda/fattn.cu): K head sizes with V of the same size (512:
# deepseek4), and MLA's 576 (V 512). Other sizes make `-fa auto` fall back to materialised scores.
CUDA_FA_HEAD_SIZES = frozenset({40, 64, 72, 80, 96, 112, 128, 256, 512})
CUDA_FA_MLA = (576, 512)
# With GPUs, the CPU keeps its own compute buffer (inputs, CPU-resident expert ops): not yet measured, kept generous.
CPU_COMPUTE_BASE_BYTES = 256 * MiB
# CPU only (flash attention on). `llama-fit-params -fitp on`, CPU build (bench/truth.py, tests/test_fit_params.py):
# - generated deepseek2/qwen3moe (n_embd 512, 8 heads, vocab 382): per ubatch token 2 B x ctx + 20 KiB
#   (the f16 KQ mask, and activations ~ 10 x n_embd in f32);
# - DeepSeek-V3.1 shape: 412 / 1,648 / 440 / 1,760 MiB at -c 4096 / 4096 / 32768 / 32768, -ub 512 / 2048 / 512 /
#   2048: the mask, f32 logits (n_vocab), the query (n_head x key_length: MLA's absorbed 576-wide heads) and an
#   n_embd activation, all at once;
# - Qwen3-235B shape (GQA): 312 / 1,251 MiB at -ub 512 / 2048 and the same at 4k and 32k: the output phase (logits,
#   query, n_embd) is the peak, and the attention phase (mask + activations) is reused memory.
# The model below is within 3% of every DeepSeek/Qwen3 row (the old one was 22-31% above on the Qwen3 shape) and
# 0-7% above the small generated ones.
CPU_MASK_BYTES = 2
CPU_ACTIVATION_BYTES = 4
CPU_ACTIVATION_EMBD_FACTOR = 10
# DSA (deepseek32, glm-dsa; models/deepseek32.cpp, llama-graph.cpp build_attn with top_k): per ubatch token, the
# fused lightning indexer's f32 score row (ggml_lightning_indexer: n_kv x n_tokens) and its own f16 mask (fused_lid)
# are live next to the MLA mask: 2 + 4 + 2 = 8 B per context cell. And the absorbed query (n_head x kv_lora_rank)
# with the concatenated one (n_head x key_length, 576), both f32, live at once. `llama-fit-params -fitp on`, CPU:
# DeepSeek-V3.2 shape 660 / 798 / 1,164 / 4,748 MiB and GLM-5.2 shape 548 / 656 / 1,040 / 4,624 MiB at -c 4k / 32k /
# 128k / 1M, -ub 512 (linear in -ub): 8 B x ctx + a constant; this model is 1-13% above every row from 4k to 1M
# (it was 37-65% low).
# GQA and hybrid models: the graph allocator's peak is one phase's tensors plus what its reuse leaves unfilled,
# which moves with the context in steps: Qwen3-Next 308 MiB at -c 4k / 8k / 16k / 128k but 340 at 32k (-ub 512),
# gpt-oss-120b 409-414 but 435 at 8k, GLM-4.6 326-344, Qwen3.5-397B 509-521 (`llama-fit-params -fitp on`, CPU).
# The phase model is at or below the low rows (within 3%); 11% more covers every spike measured (was up to 9% low).
CPU_ALLOC_SLACK = 0.11
DSA_INDEXER_CTX_BYTES = 6  # the score (4) and the indexer mask (2); the MLA mask is CPU_MASK_BYTES
# deepseek4, `llama-fit-params -fitp on` (CPU) on the DeepSeek-V4-Flash shape: 300 / 307 / 347 / 444 / 574 / 1,796
# MiB at -c 4k / 32k / 64k / 128k / 256k / 1M, -ub 512, and 1,525 MiB at 128k, -ub 2048. Not linear in -ub:
# - a part that does not depend on it: the compressed K (and indexer keys) of a ratio-4 and of a ratio-128 layer
#   as f32 (ctx / 4 x (head_dim + indexer_head_size) x 4 B + ctx / 128 x head_dim x 4 B: 82 MiB at 128k, which
#   fits both ubatches);
# - per ubatch token, the larger of the GQA model and, over long contexts, the logits row plus 1.75 B per context
#   cell (fitted from 64k to 1M; the measured slope is 0.75-1.9).
# At or 0-12% above every row from 4k to 1M (it was 12% low at 128k and 37% low at 1M).
DSV4_CTX_BYTES = 1.75
# Sparse attention of the late-2026 architectures, CPU, `llama-fit-params -fitp on` on generated models (n_embd 256)
# and on real-shaped headers of their profiles (Qwen3.8-Flash-Next, GLM-5.3-Flash, MiniMax-M3 shapes, 4k-262k,
# -ub 512 / 2048, linear in -ub): besides the output phase (logits), an attention phase per ubatch token of bytes per
# context cell plus some n_embd f32 rows, whichever is larger:
# - qwen4exp (QSA): 10.25 B per cell (the same at n_embd 256 and 2048) and 33 rows (29 at 256): 1,444 MiB at 262k;
# - glm5-next (k-pool DSA): 6.5 B per cell and 15.5 rows: 988 MiB at 262k;
# - minimax-m3 (MSA prefill scores every block): 8 B per cell per indexer head (= KV head) + 6, and 8 rows: 4,553
#   MiB at 128k with 8 heads (70 B per cell), 1,193 at 32k.
# The output phase is the GQA one with its slack: -3..+21 % of the rows where it is the larger (4k-32k); the
# attention terms are within 0-2 % of every row where they are (the generated models' too).
SPARSE_CPU_CTX_BYTES = {"qwen4exp": 10.25, "glm5-next": 6.5}
MSA_CPU_CTX_BYTES_PER_HEAD = 8
MSA_CPU_CTX_BYTES = 6
SPARSE_CPU_EMBD_ROWS = {"qwen4exp": 33, "glm5-next": 15.5, "minimax-m3": 8}
# Bigger than the output phase at real sizes, and live next to the f16 mask (CPU_MASK_BYTES per cell; the output
# phase is not, Nemotron-3.5-Lightning's shape stays at 277 MiB from 32k to 128k):
# - kimi-k3: the routed experts' f32 gate, up and activation (3 x n_expert_used x n_ff_exp) beside the attention-
#   residual history, 2 x n_layer / block_size block summaries plus n_layer / 6 more n_embd rows the allocator keeps
#   (fitted on the Kimi-K3 shape at -c 4k, -ub 512: 1,158 MiB with 93 layers, 436 with 16, 366 without the
#   residuals, where the output phase is the peak; its block size, 4, is runq's guess); generated models 0-18 % above;
# - nemotron_h_moe: the MoE phase, n_expert_used x (n_ff_exp + latent) f32 and 5.1 n_embd rows (Nemotron-3-Ultra
#   shape: 392 / 420 / 516 MiB at -c 4k / 32k / 128k, -ub 512), or the mamba2 phase, 5 f32 per inner channel and 3.8
#   rows (generated models, inner 512 / 1024).
KIMI_CPU_MOE_PLANES = 3
KIMI_CPU_EMBD_ROWS = 2  # without attention residuals
KIMI_CPU_RES_LAYERS_PER_ROW = 6
NEMOTRON_CPU_MOE_EMBD_ROWS = 5.1
NEMOTRON_CPU_MAMBA_PLANES = 5
NEMOTRON_CPU_MAMBA_EMBD_ROWS = 3.8

# --- llama-server host extras ----------------------------------------------------------------
# `--cache-ram` host prompt cache: llama-server's default is 8192 MiB; runq sets it explicitly and counts it.
SERVER_CACHE_RAM_BYTES = 8192 * MiB
SERVER_CACHE_RAM_MIN_BYTES = 1024 * MiB  # runq lowers it to this before giving up an expert layer on RAM

# --- speed -----------------------------------------------------------------------------------
# Decode is memory-bound: time per token = bytes read on each device / its effective bandwidth
# + a fixed cost per layer (kernel launches, synchronisation). Calibrated on the H200 table in llama-cpp.md:
# all experts on CPU (0.86 GB/token from RAM) ran 56.9 t/s with 16 threads and all-on-GPU ran 426.5 t/s
# (2.34 ms/token for 17 layers, of which ~0.47 ms is reading 1.57 GB at 70% of 4.8 TB/s).
GPU_BANDWIDTH_EFFICIENCY = 0.70
PER_LAYER_OVERHEAD_S = 0.11e-3
# Effective RAM bandwidth of the 16-core Xeon host that measured 56 GB/s (from the all-on-CPU row less the GPU time).
DEFAULT_CPU_BANDWIDTH = 56e9
REFERENCE_CORES = 16
# -t 8 instead of 16 cut decode from ~105 to 81 t/s: effective bandwidth ~ (threads/16)^0.4 below 16 threads.
THREAD_SCALING_EXPONENT = 0.4
# Peak memory bandwidth by GPU name (bytes/s), for described GPUs and when NVML gives no bus width/clock.
GPU_BANDWIDTH_BY_NAME = {
    "H200": 4.8e12, "H100 SXM": 3.35e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
    "A100 80GB": 2.04e12, "A100": 1.56e12, "L40S": 864e9, "L40": 864e9, "A6000": 768e9,
    "RTX 6000 Ada": 960e9, "RTX PRO 6000": 1.79e12, "5090": 1.79e12, "4090": 1.01e12, "3090": 936e9,
    "4080": 717e9, "3080": 760e9, "4070": 504e9, "A40": 696e9,
}  # fmt: skip
DEFAULT_GPU_BANDWIDTH = 900e9  # an RTX 3090/4090-class card, when nothing better is known


def gpu_bandwidth(name: str, reported: float | None) -> float:
    if reported:
        return reported
    for key, bw in GPU_BANDWIDTH_BY_NAME.items():
        if key.lower() in name.lower():
            return bw
    return DEFAULT_GPU_BANDWIDTH


def cpu_bandwidth(threads: int, described: float | None = None) -> float:
    base = described or DEFAULT_CPU_BANDWIDTH
    return base * min(1.0, threads / REFERENCE_CORES) ** THREAD_SCALING_EXPONENT


def ram_margin(ram_total: int) -> int:
    return max(RAM_MARGIN_MIN_BYTES, int(ram_total * RAM_MARGIN_FRACTION))


def uses_flash_attention(hp: HParams) -> bool:
    """Whether llama.cpp's `-fa auto` finds a CUDA flash-attention kernel for this head size."""
    if hp.is_mla:
        return (hp.key_length, hp.kv_lora_rank) == CUDA_FA_MLA
    return hp.key_length == hp.value_length and hp.key_length in CUDA_FA_HEAD_SIZES


def _gpu_phases(hp: HParams, ctx: int, has_output: bool, offload: bool) -> tuple[float, float]:
    """Bytes per ubatch token of a CUDA device's biggest phase, and of its MoE phase (op offload adds a copy)."""
    heads = max(hp.n_head, default=0)
    emb = ACT_BYTES * hp.n_embd
    mask = FA_MASK_BYTES * ctx
    logits = LOGIT_BYTES * hp.n_vocab
    rows = GPU_ALLOC_EMBD_ROWS.get(hp.arch, GPU_ALLOC_EMBD_ROWS_DEFAULT)[offload]
    output = (logits if has_output else 0) + rows * emb + GPU_OUT_MASK_SHARE * mask
    moe_rows = GPU_MOE_EMBD_ROWS_HYBRID if hp.recurrent_layers else GPU_MOE_EMBD_ROWS
    moe: float = mask + ACT_BYTES * hp.n_expert_used * (2 * hp.n_ff_exp + hp.n_embd) + moe_rows * emb
    attention: float
    if hp.is_mla:
        attention = mask + ACT_BYTES * heads * (2 * hp.kv_lora_rank + hp.key_length)
    else:
        attention = mask + ACT_BYTES * heads * (hp.key_length + hp.value_length)
    if hp.is_mla and hp.indexer_head_size:  # DSA
        attention = DSA_GPU_CTX_BYTES * ctx + logits + ACT_BYTES * heads * hp.key_length + DSA_GPU_EMBD_ROWS * emb
        moe += DSA_GPU_MOE_CTX_BYTES * ctx + DSA_GPU_MOE_EMBD_ROWS * emb
    elif hp.kv_compress:  # deepseek4
        attention = logits + DSV4_GPU_EMBD_ROWS * emb + DSV4_GPU_CTX_BYTES * ctx
        moe += DSV4_GPU_MOE_EMBD_ROWS * emb
    if hp.arch in SPARSE_CPU_EMBD_ROWS:  # not measured on CUDA yet: the CPU's sparse-attention terms stand in
        attention = max(attention, sparse_attention_bytes(hp, ctx))
    elif hp.arch in ("kimi-k3", "nemotron_h_moe"):  # likewise their MoE phase
        moe = max(moe, mask + _hybrid_moe_bytes(hp))
    peak = max(output, attention, moe)
    if not uses_flash_attention(hp):  # the materialised scores and an f32 mask, on top of any phase
        peak += (heads * SCORE_BYTES + NO_FA_MASK_BYTES) * ctx
    return peak, moe


def gpu_compute_bytes(
    hp: HParams, ctx: int, ubatch: int, *, has_output: bool = True, offload_copy_bytes: int = 0
) -> int:
    """A CUDA device's compute buffer (fa auto); `offload_copy_bytes`: the largest CPU-resident expert weight the
    GPU multiplies (op offload), 0 when every expert it runs is in its own memory."""
    peak, moe = _gpu_phases(hp, ctx, has_output, offload_copy_bytes > 0)
    copies = DSV4_OFFLOAD_COPIES if hp.kv_compress else 1
    return int(max(ubatch * peak, ubatch * moe + copies * offload_copy_bytes))


def cpu_compute_bytes(hp: HParams, ubatch: int) -> int:
    """The CPU's compute buffer when the layers run on GPUs."""
    return CPU_COMPUTE_BASE_BYTES + hp.n_vocab * ubatch * LOGIT_BYTES


def cpu_only_compute_bytes(hp: HParams, ctx: int, ubatch: int) -> int:
    """The compute buffer when everything runs on the CPU."""
    heads = max(hp.n_head, default=0)
    query = heads * hp.key_length
    attention = CPU_MASK_BYTES * ctx + CPU_ACTIVATION_BYTES * max(CPU_ACTIVATION_EMBD_FACTOR * hp.n_embd, query)
    output = LOGIT_BYTES * hp.n_vocab + CPU_ACTIVATION_BYTES * (query + hp.n_embd)
    per_token: float
    if hp.arch in SPARSE_CPU_EMBD_ROWS:
        return int(ubatch * max(output * (1 + CPU_ALLOC_SLACK), sparse_attention_bytes(hp, ctx)))
    if hp.arch in ("kimi-k3", "nemotron_h_moe"):
        return int(ubatch * max(output * (1 + CPU_ALLOC_SLACK), CPU_MASK_BYTES * ctx + _hybrid_moe_bytes(hp)))
    if hp.is_mla:
        per_token = (
            CPU_MASK_BYTES * ctx
            + output
            + CPU_ACTIVATION_BYTES * max(CPU_ACTIVATION_EMBD_FACTOR * hp.n_embd - query, 0)
        )
        if hp.indexer_head_size:  # DSA
            per_token += DSA_INDEXER_CTX_BYTES * ctx + CPU_ACTIVATION_BYTES * heads * (hp.kv_lora_rank + hp.key_length)
    elif not hp.kv_compress:
        per_token = max(attention, output) * (1 + CPU_ALLOC_SLACK)
    else:
        per_token = max(attention, output)
    if hp.kv_compress:  # deepseek4
        per_token = max(per_token, LOGIT_BYTES * hp.n_vocab + DSV4_CTX_BYTES * ctx)
        csa, hca = -(-ctx // DSV4_CSA_RATIO), -(-ctx // max(hp.kv_compress))
        f32_keys = (csa * (hp.key_length + hp.indexer_head_size) + hca * hp.key_length) * CPU_ACTIVATION_BYTES
        return int(ubatch * per_token) + f32_keys
    return int(ubatch * per_token)


def _hybrid_moe_bytes(hp: HParams) -> float:
    """Bytes per ubatch token of kimi-k3's and nemotron_h_moe's biggest non-output phase (see the constants)."""
    emb = CPU_ACTIVATION_BYTES * hp.n_embd
    if hp.arch == "kimi-k3":
        rows: float = KIMI_CPU_EMBD_ROWS
        if hp.attn_res_block:
            rows = 2 * hp.n_layer / hp.attn_res_block + hp.n_layer / KIMI_CPU_RES_LAYERS_PER_ROW
        return CPU_ACTIVATION_BYTES * KIMI_CPU_MOE_PLANES * hp.n_expert_used * hp.n_ff_exp + rows * emb
    moe = CPU_ACTIVATION_BYTES * hp.n_expert_used * (hp.n_ff_exp + (hp.expert_latent or hp.n_embd))
    mamba = CPU_ACTIVATION_BYTES * NEMOTRON_CPU_MAMBA_PLANES * hp.ssm_d_inner + NEMOTRON_CPU_MAMBA_EMBD_ROWS * emb
    return max(moe + NEMOTRON_CPU_MOE_EMBD_ROWS * emb, mamba)


def sparse_attention_bytes(hp: HParams, ctx: int) -> float:
    """Bytes per ubatch token of the attention phase of qwen4exp / glm5-next / minimax-m3 (see the constants)."""
    if hp.arch == "minimax-m3":  # one MSA indexer head per KV head (minimax-m3.cpp asserts it)
        per_cell: float = MSA_CPU_CTX_BYTES_PER_HEAD * max(hp.n_head_kv, default=0) + MSA_CPU_CTX_BYTES
    else:
        per_cell = SPARSE_CPU_CTX_BYTES[hp.arch]
    return per_cell * ctx + SPARSE_CPU_EMBD_ROWS[hp.arch] * CPU_ACTIVATION_BYTES * hp.n_embd


# --- other hosts over llama.cpp's RPC backend (runq worker) ----------------------------------
# Assumptions, not measurements (no second host to measure on yet); each is stated in the plan's reasons.
# A device on a worker keeps what llama.cpp's RPC server allocates for the graph it runs: like the CPU's own
# compute buffer when the layers run elsewhere (the expert matmuls' activations), kept generous.
RPC_COMPUTE_BYTES = 256 * MiB
RPC_COMPUTE_SOURCE = "runq's reserve for a worker (not a prediction)"
# Stock RPC makes about 600 round trips per token for a 47-layer model (GLM-4.7-Flash; graph_compute,
# get_alloc_size, set/get_tensor per split: michaelneale/decentralized-inference README), ~13 per layer;
# runq puts only expert tensors on workers, one graph split per layer and worker: 12 round trips per layer.
RPC_ROUND_TRIPS_PER_LAYER = 12
# A switched 1-10 GbE LAN: about 0.2 ms per TCP round trip (assumed). Loopback, measured here (2-core EPYC VM,
# generated deepseek2, n_embd 256, experts of 6 layers on two loopback workers): decode 1,450-1,570 -> 275 tok/s,
# 3.0 ms more per token = 0.5 ms per remote layer = 12 round trips of 0.042 ms.
NET_LATENCY_S = 0.2e-3
LOOPBACK_LATENCY_S = 0.042e-3
# A worker whose link speed is not given: 1 Gbit/s (the common home LAN); loopback: memory-copy speed.
DEFAULT_NET_BYTES_S = 1e9 / 8
LOOPBACK_NET_BYTES_S = 10e9
# Activations crossing per layer and token: the hidden state there and back, f32.
ACTIVATION_BYTES = 4


def rpc_layer_seconds(n_embd: int, net_bytes_s: float, latency_s: float) -> float:
    """Network time per token for one layer whose experts run on a worker: round trips plus activations."""
    return RPC_ROUND_TRIPS_PER_LAYER * latency_s + 2 * n_embd * ACTIVATION_BYTES / net_bytes_s
