"""Real model shapes as header-only GGUF sets (sparse files), for the benchmarks that ask llama.cpp for sizes.

Every catalog profile runq knows (one quant each), plus shapes runq has no profile for yet but whose
architecture it knows (Qwen3-235B-A22B, GQA). The files have real-shaped headers and holes for data:
`llama-fit-params` reads only metadata. Used by bench/truth.py and bench/gpu_fit_rows.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.catalog.profiles import Profile, load_profiles, parse_profile

QWEN3_235B = """
name = "qwen3-235b-shape"
display_name = "Qwen3-235B-A22B (shape)"
repo = "unsloth/Qwen3-235B-A22B-GGUF"
default_ctx = 16384
[arch]
name = "qwen3moe"
n_layer = 94
n_embd = 4096
n_vocab = 151936
context_length = 262144
n_head = 64
n_head_kv = 4
key_length = 128
value_length = 128
n_ff_exp = 1536
n_expert = 128
n_expert_used = 8
[[quants]]
name = "UD-Q2_K_XL"
path = "UD-Q2_K_XL/Qwen3-235B-A22B-UD-Q2_K_XL-00001-of-00002.gguf"
size_bytes = 88_000_000_000
expert_bits = { down = 3.5, up = 2.5, gate = 2.5 }
"""


@dataclass(frozen=True)
class ShapeSet:
    name: str  # "DeepSeek-V3.1 UD-Q2_K_XL"
    arch: str
    first: Path  # shard 1 of the sparse set


def shapes(root: Path, quant_for: dict[str, str] | None = None) -> list[ShapeSet]:
    """One sparse set per known profile (the quant named in quant_for, else the one nearest 2.5 bits)."""
    from tests.support.sparse_models import write_sparse_quant

    profiles: list[Profile] = [*load_profiles(), parse_profile(QWEN3_235B, "bench/shapes.py")]
    out = []
    for p in profiles:
        wanted = (quant_for or {}).get(p.name, "UD-Q2_K_XL")
        q = next((x for x in p.quants if x.name == wanted), p.quants_by_size()[0])
        files = write_sparse_quant(p, q, root / p.name)
        out.append(ShapeSet(f"{p.display_name} {q.name}", p.arch.name, files[0]))
    return out
