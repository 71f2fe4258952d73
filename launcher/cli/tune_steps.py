"""`runq tune`'s steps beyond the llama-bench search: the depth each candidate is measured at, llama.cpp's own
default placement at the user's context, and MTP drafting measured through llama-server.

CLI layer (runs llama-bench, llama-fit-params, llama-server through llama/); the decisions are measure/tune.py's.
- Depth: `--depth N`, or auto: the plan's context less the turn, as much as a quarter of each candidate's share
  of the budget fills at the prompt speed one short probe measures (tune.depth_for). llama-bench fills that many
  tokens untimed, then times the prompt and the answer on top (-d): "balanced" is a real turn at that depth.
- llama.cpp's default with GPUs: llama-fit-params at the user's context (not llama-bench's own -fitt, which fits
  at prompt + answer + depth tokens) with llama.cpp's own batch sizes, its answer passed to llama-bench as
  -ngl/-ot/-ts; where that cannot be asked, llama-bench's -fitt.
- MTP: for a model with NextN layers, when this llama-server takes `--spec-type draft-mtp`, the winner is measured
  through llama-server with and without it (llama-bench has no speculative decoding); drafting is kept only if it
  measured faster for the goal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from launcher.errors import RunqError, UsageError

FILL_SHARE = 0.25  # of each candidate's share of the budget, for filling its context
PROBE_TIMEOUT_S = 60


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_depth(text: str) -> int | None:
    """--depth N (tokens, 0 or more), or None for auto."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--depth {text!r}: expected a number of tokens or auto", hint="e.g. --depth 4096") from None
    if value < 0:
        raise UsageError(f"--depth {value}: must be 0 or more", hint="--depth 0 measures on an empty cache")
    return value


def choose_depth(ctx: Any, start_plan: Any, budget_s: float) -> int:
    """The depth every candidate is measured at (see the module docstring)."""
    from launcher.llama import bench as bench_run
    from launcher.llama.argv import bench_argv
    from launcher.measure import tune

    args = ctx.args
    asked = parse_depth(args.depth)
    if asked is not None:
        return asked
    room = tune.depth_for(start_plan.ctx, args.pp, args.tg, None, 0)
    if room == 0:
        return 0
    argv = bench_argv(ctx.bench, ctx.model_path, start_plan, pp=args.pp, tg=0, reps=1)
    res = bench_run.run(argv, timeout_s=min(PROBE_TIMEOUT_S, budget_s / 4), gpus=bool(ctx.machine.gpus))
    fill_s = budget_s / max(1, ctx.planned) * FILL_SHARE
    return tune.depth_for(start_plan.ctx, args.pp, args.tg, res.tps(prompt=True) or 1.0, fill_s)


def baseline_flags(found: Any, model_path: str, plan: Any, gpus: int, fit_target_mib: int) -> list[str] | None:
    """llama.cpp's own fit at the plan's context, as llama-bench flags; None: leave it to llama-bench's -fitt."""
    from launcher.llama.fit import Oracle, fit_default

    oracle = Oracle.find(found)
    if not gpus or oracle is None or oracle.cpu_only:
        return None
    from pathlib import Path

    try:
        answer = fit_default(oracle, Path(model_path), plan, [fit_target_mib] * gpus, llama_batch=True)
    except RunqError as e:
        _say(f"  llama.cpp's fit could not be asked ({e.message}): its default measured with llama-bench -fitt")
        return None
    return answer.bench_flags()


def mtp_applies(source: Any, found: Any) -> bool:
    """A model with NextN/MTP layers (their tensors in the file) and a llama-server that drafts with them."""
    hp = source.hparams
    if hp.n_layer_nextn <= 0:
        return False
    probe = f"blk.{hp.n_layer - hp.n_layer_nextn}.nextn.eh_proj.weight"
    if not any(t.name == probe for t in source.tensors.tensors):
        return False
    h = found.help("llama-server")
    return h is not None and h.takes("--spec-type", "draft-mtp")


def server_argv(ctx: Any, p: Any, port: int) -> list[str]:
    from launcher.llama.argv import build_argv, launch_for
    from launcher.plan.inputs import ServerOptions

    h = ctx.found.help("llama-server")
    launch = launch_for(ctx.found.tool("llama-server"), ctx.model_path, None, server=ServerOptions(port=port),
                        flags=h.flags() if h else None, help=h, where=ctx.found.label)  # fmt: skip
    return build_argv(p, launch)


def measure_served(ctx: Any, k: Any, plan_for: Any) -> Any:
    """One candidate through llama-server (a fresh turn per repetition at the tune's depth)."""
    from launcher.llama import serve_bench
    from launcher.llama.server import free_port
    from launcher.measure import tune
    from launcher.paths import logs_dir

    left = ctx.deadline - time.monotonic()
    if left < 5:
        raise tune.Stop("the budget is spent")
    p = plan_for(ctx, k)
    port = free_port()
    argv = server_argv(ctx, p, port)
    ctx.count += 1
    if not ctx.args.json:
        _say(f"  [{ctx.count}/{ctx.planned}] {k.label} (llama-server)")
    if not p.fits:
        return tune.Measured(k, tuple(argv), error="the plan does not fit: " + "; ".join(p.problems),
                             depth=ctx.depth, via="llama-server")  # fmt: skip
    log = logs_dir() / f"tune-server-{port}.log"
    res = serve_bench.run(argv, port, log, depth=ctx.depth, pp=ctx.args.pp, tg=ctx.args.tg,
                          reps=ctx.args.repetitions, n_vocab=ctx.hp.n_vocab, timeout_s=left)  # fmt: skip
    m = tune.Measured(k, tuple(argv), res.tps(prompt=True), res.tps(prompt=False), res.peak_bytes, res.error,
                      res.seconds, res.samples(prompt=True), res.samples(prompt=False), res.busy_share,
                      depth=ctx.depth, via="llama-server")  # fmt: skip
    if not ctx.args.json:
        drafted = next((t for t in res.tests if t.get("n_gen")), {})
        more = f", {drafted['draft_n_accepted']}/{drafted['draft_n']} drafts accepted" if drafted.get("draft_n") else ""
        _say(
            f"      pp {m.pp_tps or 0:.1f} t/s, tg {m.tg_tps or 0:.1f} t/s{more}"
            if not m.error
            else f"      failed: {m.error}"
        )
    return m


CACHE_KEEP_MIB = 256  # of the VRAM the plan leaves free, kept out of the expert cache


def cache_mib(help_: Any, plan: Any) -> int:
    """The GPU expert cache to try (`--moe-cache-mib`, newer llama.cpp than the pin): only where this llama-server
    lists it, on one GPU, with experts left on the CPU; sized from the VRAM the plan leaves free. 0: not tried."""
    if help_ is None or not help_.accepts("--moe-cache-mib") or len(plan.gpu_devices) != 1 or plan.remote_devices:
        return 0
    if not any(".ffn_" in n and "_exps" in n for n in plan.cpu_tensors):
        return 0
    left = plan.gpu_devices[0].free_bytes // 2**20 - CACHE_KEEP_MIB
    return left if left >= CACHE_KEEP_MIB else 0


def cache_step(ctx: Any, best: Any, goal: Any, plan_for: Any) -> tuple[list[Any], Any]:
    """(the server measurements, the winner): a GPU expert cache against the same candidate without it."""
    from launcher.measure import tune

    if best is None or best.knobs.baseline:
        return [], best
    mib = cache_mib(ctx.found.help("llama-server"), plan_for(ctx, best.knobs))
    if not mib:
        return [], best
    try:
        plain = measure_served(ctx, best.knobs, plan_for)
        cached = measure_served(ctx, replace(best.knobs, moe_cache_mib=mib), plan_for)
    except tune.Stop as e:
        _say(f"  the GPU expert cache not measured: {e}")
        return [], best
    except KeyboardInterrupt:
        ctx.interrupted = True
        return [], best
    return [plain, cached], tune.with_spec(best, plain, cached, goal)


def mtp_step(ctx: Any, best: Any, goal: Any, plan_for: Any, source: Any) -> tuple[list[Any], Any]:
    """(the two server measurements, the winner): MTP drafting against the same candidate without it."""
    from launcher.measure import tune

    if best is None or not mtp_applies(source, ctx.found):
        return [], best
    try:
        plain = measure_served(ctx, best.knobs, plan_for)
        drafted = measure_served(ctx, replace(best.knobs, spec="draft-mtp"), plan_for)
    except tune.Stop as e:
        _say(f"  MTP drafting not measured: {e}")
        return [], best
    except KeyboardInterrupt:
        ctx.interrupted = True
        return [], best
    return [plain, drafted], tune.with_spec(best, plain, drafted, goal)
