"""Time llama-server itself, for what llama-bench cannot run: speculative decoding (`--spec-type draft-mtp`) and,
in newer builds, a GPU expert cache.

Edge: starts llama-server (runq's child: stopped by pid before this returns, also on Ctrl-C), sends `/completion`
requests and reads llama.cpp's own timings. Each repetition is one fresh turn (no prompt cache): a prompt of
`depth + pp` token ids (the context the user runs at), then `tg` generated tokens whatever they are (`ignore_eos`,
greedy). Figures come back as llama-bench's JSONL rows would (`n_prompt`, `n_gen`, `n_depth`, `avg_ts`,
`samples_ts`), so tune reads both the same way; the prompt figure is the whole prompt's prefill (from position 0,
where llama-bench times only the last pp tokens), the decode figure is at the depth. Drafted and accepted tokens
(`draft_n`, `draft_n_accepted`) are kept.
"""

from __future__ import annotations

import statistics
import time
import urllib.error
from pathlib import Path
from typing import Any

from launcher.errors import RunqError
from launcher.llama import server as srv
from launcher.llama.bench import BenchResult, busy_share, cpu_ticks

FIRST_TOKEN_ID = 16  # past the special tokens of every vocabulary runq generates or knows


def prompt_ids(n: int, n_vocab: int) -> list[int]:
    """n token ids spread over the vocabulary (no special tokens), the same every time."""
    span = max(1, n_vocab - FIRST_TOKEN_ID - 1)
    return [FIRST_TOKEN_ID + (i * 7919) % span for i in range(n)]


def run(argv: list[str], port: int, log_path: Path, *, depth: int, pp: int, tg: int, reps: int, n_vocab: int,
        timeout_s: float) -> BenchResult:  # fmt: skip
    """Start llama-server with argv (listening on 127.0.0.1:port), time `reps` turns, stop it. Never raises for a
    server that fails or runs out of time: the result carries the error (and the end of its log)."""
    start = time.monotonic()
    ticks = cpu_ticks()
    try:
        server = srv.start(argv, log_path, "127.0.0.1", port)
    except RunqError as e:
        return BenchResult((), {}, 0.0, e.message)
    own_cpu = 0.0
    rss = 0
    try:
        srv.wait_healthy(server, timeout=max(1.0, timeout_s))
        turns = [_turn(server, depth, pp, tg, n_vocab, deadline=start + timeout_s) for _ in range(reps)]
        own_cpu, rss = _usage(server.proc.pid)
    except RunqError as e:
        server.stop()
        return BenchResult((), {}, time.monotonic() - start, e.message, tuple(server.log_text().splitlines()[-15:]))
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        server.stop()
        return BenchResult((), {}, time.monotonic() - start, f"llama-server did not answer: {e}")
    server.stop()
    busy = busy_share(ticks, cpu_ticks(), own_cpu)
    return BenchResult(_rows(turns, depth, pp, tg), {"CPU": rss}, time.monotonic() - start, busy_share=busy)


def _turn(server: srv.Server, depth: int, pp: int, tg: int, n_vocab: int, deadline: float) -> dict[str, Any]:
    left = deadline - time.monotonic()
    if left < 1:
        raise RunqError(f"stopped after the time budget (llama-server at {server.url})")
    body = {"prompt": prompt_ids(depth + pp, n_vocab), "n_predict": tg, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False}  # fmt: skip
    timings = server.request("/completion", body, timeout=left).get("timings") or {}
    if not timings.get("predicted_per_second"):
        raise RunqError("llama-server answered without timings")
    return dict(timings)


def _rows(turns: list[dict[str, Any]], depth: int, pp: int, tg: int) -> tuple[dict[str, Any], ...]:
    prompt = [float(t["prompt_per_second"]) for t in turns if t.get("prompt_per_second")]
    decode = [float(t["predicted_per_second"]) for t in turns]
    drafted = sum(int(t.get("draft_n", 0) or 0) for t in turns)
    accepted = sum(int(t.get("draft_n_accepted", 0) or 0) for t in turns)
    extra = {"n_depth": depth, "draft_n": drafted, "draft_n_accepted": accepted}
    rows = [{"n_prompt": 0, "n_gen": tg, "avg_ts": statistics.mean(decode), "samples_ts": decode, **extra}]
    if prompt:
        rows.insert(0, {"n_prompt": pp, "n_gen": 0, "avg_ts": statistics.mean(prompt), "samples_ts": prompt, **extra})
    return tuple(rows)


def _usage(pid: int) -> tuple[float, int]:
    """CPU seconds and resident bytes of the server now (before it is stopped)."""
    try:
        import psutil

        p = psutil.Process(pid)
        t = p.cpu_times()
        return t.user + t.system, int(p.memory_info().rss)
    except Exception:  # gone, or no psutil: nothing to report
        return 0.0, 0
