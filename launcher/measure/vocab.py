"""The generated models' tokenizer: a byte-level BPE trained on a small fixed corpus, so every model is the same.

Pure: no I/O.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from functools import cache

_CORPUS = """
The quick brown fox jumps over the lazy dog. A mixture of experts model routes every token
to a few experts out of many, so most of its weights sit idle for any one token. That is why
the experts can live in system memory while attention and the shared weights stay on the GPU.
Hello there! How are you today? I am fine, thank you. What is the capital of France? Paris is.
Please write a short poem about the sea, the wind and the stars in the night sky above us all.
The model reads the prompt, thinks for a while and then answers with the words it has learned.
"""


@cache
def _byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies store)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def bpe_vocab(n_merges: int) -> tuple[list[str], list[str]]:
    """(tokens, merges) of a byte-level BPE trained on a small fixed corpus: deterministic."""
    enc = _byte_encoder()
    words = Counter(
        "".join(enc[b] for b in w.encode("utf-8"))
        for w in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", _CORPUS)
    )
    splits = {w: list(w) for w in words}
    tokens = [enc[b] for b in range(256)]
    known = set(tokens)
    merges: list[str] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, count in words.items():
            parts = splits[w]
            for a, b in itertools.pairwise(parts):
                pairs[a, b] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        if merged not in known:
            tokens.append(merged)
            known.add(merged)
        for w, parts in splits.items():
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[w] = out
    return tokens, merges
