"""`runq calibrate` and `runq tune`. CLI layer: prints, decides exit codes; the decisions are in measure/tune.py and
machine/speed.py, the measuring in measure/calibrate.py and llama/bench.py, tuned results in measure/store.py; every
plan (tune's start included) comes from the pipeline, which also applies what was measured.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from launcher.errors import EXIT_INTERRUPTED, EXIT_OK, RunqError, UsageError
from launcher.llama.argv import FIT_TARGET_MIB, bench_argv
from launcher.llama.binaries import binaries_here
from launcher.machine.spec import Machine, limit_gpus


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- runq calibrate --------------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from launcher.machine.probe import probe
    from launcher.measure import calibrate as calibration

    machine = probe(cpu_details=False)
    found = binaries_here(args.llama_bin)
    if found is None or not found.has("llama-bench"):
        raise RunqError(
            "calibration runs llama-bench, and there is no llama.cpp build for this machine yet",
            hint="run `runq build` first (or give --llama-bin DIR with llama-bench in it)",
        )
    bin_dir, key = found.bin_dir, found.key
    model, rec, path = calibration.calibrate(
        machine, bin_dir, key, cuda=bool(machine.gpus), say=(lambda _t: None) if args.json else _say
    )
    if args.json:
        out = {
            "calibrated_at": rec["calibrated_at"],
            "took_s": rec["took_s"],
            "generating_s": rec["generating_s"],
            "fingerprint": rec["fingerprint"],
            "cpu": [
                {"threads": p.threads, "bandwidth_bytes_s": round(p.bandwidth), "layer_s": p.layer_s} for p in model.cpu
            ],
            "gpus": [{"device": d, "bandwidth_bytes_s": round(bw)} for d, bw in model.gpu_bandwidth],
            "h2d": [{"device": d, "bytes_s": round(bw)} for d, bw in model.h2d_bytes_s],
            "provisional": model.provisional or None,
            "busy": rec["busy"],
            "spread": rec["spread"],
            "path": str(path),
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print(f"Calibrated in {rec['took_s']:.0f} s ({rec['fingerprint']['cpu']}, build {key}):")
    print("  threads  effective RAM bandwidth  per-layer cost")
    for p in model.cpu:
        print(f"  {p.threads:>7}  {p.bandwidth / 1e9:>17.1f} GB/s  {p.layer_s * 1e6:>11.1f} µs")
    for dev, bw in model.gpu_bandwidth:
        print(f"  {dev}: effective bandwidth {bw / 1e9:.0f} GB/s")
    for dev, bw in model.h2d_bytes_s:
        print(f"  {dev}: host-to-device copy about {bw / 1e9:.1f} GB/s")
    if not machine.gpus:
        print("  no GPU: CPU constants only")
    if rec.get("kept_earlier"):
        print(f"  kept {rec['kept_earlier']} measurement(s) of an earlier calibration taken idle where this one was"
              " under load")  # fmt: skip
    if model.provisional:
        print(f"  provisional: {model.provisional}; the next `runq run` on an idle machine measures again")
    print(f"Saved in {path}; plans on this machine now say 'calibrated on this machine, {rec['calibrated_at'][:10]}'.")
    return EXIT_OK


# --- runq tune --------------------------------------------------------------------------------------------


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(s|m|min|h)\s*", text.lower())
    if not m:
        raise UsageError(f"--budget {text!r}: expected a duration like 90s, 10m or 1h", hint="e.g. --budget 10m")
    value = float(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    if value <= 0:
        raise UsageError(f"--budget {text!r} must be more than zero", hint="e.g. --budget 10m")
    return value


@dataclass
class _Ctx:
    """What every candidate of one tune run shares."""

    machine: Machine
    tensors: Any
    hp: Any
    req: Any
    bench: list[str]  # llama-bench, or a multi-call `llama bench`
    model_path: str
    args: argparse.Namespace
    deadline: float
    planned: int
    biggest_layer: int
    start: float
    fit_target_mib: int = 1024  # the baseline's llama.cpp -fitt: its default, or more under --gpu-limit
    count: int = 0
    interrupted: bool = False
    found: Any = None  # the build (its tools and their --help)
    depth: int = 0  # context filled before every timed turn (llama-bench -d)
    baseline_flags: list[str] | None = None  # llama.cpp's own fit at the user's context, as llama-bench flags


def cmd_tune(args: argparse.Namespace) -> int:
    from launcher.cli.common import ensure_model
    from launcher.measure import store as tuned_store
    from launcher.measure import tune

    budget = parse_budget(args.budget)
    tune.check_inputs(args.repetitions, args.pp, args.tg)
    start_time = time.monotonic()
    planned, real, found, fit_target, limit = _tune_start(args)
    machine = planned.machine
    chosen = planned.chosen
    target = planned.target
    model_path = ensure_model(target, chosen.source.name, auto=False, yes=False, dry=False)
    tensors, hp = chosen.source.tensors, chosen.source.hparams
    # Expert layers per GPU are tried whenever there is a GPU: runq's margins may have kept a small one unused.
    space = tune.space_for(machine.cores, machine.cpu.logical_cores or machine.cores, bool(machine.gpus), args.goal)
    start_knobs = tune.start_knobs(chosen.plan)
    baseline = replace(start_knobs, baseline=True)
    biggest = max((tensors.expert_bytes(il) for il in tensors.expert_layers), default=0)
    planned_n = 3 + len(list(tune.planned(start_knobs, space)))  # + baseline, + the confirming pair
    from launcher.cli import tune_steps

    mtp = tune_steps.mtp_applies(chosen.source, found)
    planned_n += 2 if mtp else 0
    ctx = _Ctx(machine, tensors, hp, planned.request, found.tool("llama-bench"), str(model_path), args,
               start_time + budget, planned_n, biggest, time.monotonic(), fit_target, found=found)  # fmt: skip
    ctx.baseline_flags = tune_steps.baseline_flags(found, str(model_path), chosen.plan, len(machine.gpus), fit_target)
    _check_bench(ctx, chosen.plan)
    ctx.depth = tune_steps.choose_depth(ctx, chosen.plan, budget)
    if not args.json:
        at = f" at {ctx.depth:,} tokens of context (-d)" if ctx.depth else " on an empty cache"
        _say(f"Tuning {target.name} {chosen.source.name} for {args.goal} with llama-bench (pp{args.pp}, tg{args.tg}"
             f"{at}, {args.repetitions} repetitions; at most {ctx.planned} candidates, "
             f"budget {budget:.0f} s)…")  # fmt: skip
    measured, stopped = tune.search(start_knobs, baseline, space, args.goal, lambda k: _measure(ctx, k))
    best = tune.choose(measured, args.goal)
    if not stopped and not ctx.interrupted:
        served, best = tune_steps.mtp_step(ctx, best, args.goal, _plan_for, chosen.source)
        measured += served
        served, best = tune_steps.cache_step(ctx, best, args.goal, _plan_for)
        measured += served
    base = next((m for m in measured if m.knobs.baseline and m.via == "llama-bench"), None)
    key = tuned_store.model_key(target)
    if best is not None and limit is None:
        tuned_store.save(machine, found.key, key, chosen.source.name, args.goal, best, measured)
    if best is not None:
        _refit(real, found.key, key, measured, ctx)
    if args.json:
        print(json.dumps({"baseline": tune.BASELINE, "chosen": best.label if best else None, "depth": ctx.depth,
                          "candidates": [m.as_json() for m in measured]}, indent=2))  # fmt: skip
    else:
        _print_table(measured, best, base, args.goal, stopped, saved=limit is None, depth=ctx.depth, pp=args.pp,
                     tg=args.tg)  # fmt: skip
    if ctx.interrupted:
        return EXIT_INTERRUPTED
    if best is None:
        raise RunqError("no candidate ran: nothing was measured", hint="see the errors above; try a larger --budget")
    return EXIT_OK


def _tune_start(args: argparse.Namespace) -> tuple[Any, Machine, Any, int, int | None]:
    """(runq's untuned plan, this machine with its measured constants, the build, the baseline's -fitt, the GPU
    limit). The plan is made exactly as `runq plan` makes it (the same checks of every input, llama.cpp's sizes)
    and before anything slow, so a bad input is refused at once; a first calibration comes after."""
    from launcher.cli.common import plan_for
    from launcher.machine.probe import probe
    from launcher.pipeline.measured import with_speed

    machine = probe(cpu_details=False)
    limit = _gpu_limit(machine, getattr(args, "gpu_limit", None))  # checked before anything slow
    found = binaries_here(args.llama_bin)
    if found is None or not found.has("llama-bench"):
        raise RunqError("tune runs llama-bench, and there is no llama.cpp build for this machine yet",
                        hint="run `runq build` first (or give --llama-bin DIR)")  # fmt: skip
    fit_target = FIT_TARGET_MIB
    if limit is not None:
        # The baseline gets the same room: llama.cpp's default margin plus the free memory above the limit.
        fit_target += max(max(0, g.free_bytes - limit) for g in machine.gpus) // 2**20
    planned, _ = plan_for(args, server=True, machine=limit_gpus(machine, limit) if limit else machine, tuned=False)
    real = with_speed(machine, found, calibrate_now=not args.no_calibrate, say=_say)
    if real.speed is not None and planned.machine.speed is None:  # calibrated just now: the start's prediction too
        planned, _ = plan_for(args, server=True, machine=limit_gpus(real, limit) if limit else real, tuned=False)
    return planned, real, found, fit_target, limit


def _gpu_limit(machine: Machine, text: str | None) -> int | None:
    from launcher.units import parse_size

    if text is None:
        return None
    limit = parse_size(text, what="--gpu-limit")
    if limit <= 0:
        raise UsageError(f"--gpu-limit {text!r} must be more than zero", hint="e.g. --gpu-limit 8GiB")
    if not machine.gpus:
        raise UsageError("--gpu-limit: this machine has no GPU runq can see", hint="leave --gpu-limit out")
    return limit


def _plan_for(ctx: _Ctx, k: Any) -> Any:
    from launcher.measure.tune import request_for
    from launcher.plan.place import plan

    return plan(ctx.machine, ctx.tensors, ctx.hp, request_for(ctx.req, k, ctx.biggest_layer))


def _measure(ctx: _Ctx, k: Any) -> Any:
    """One candidate; Ctrl-C anywhere in it (llama-bench is killed first) ends the search, keeping the rest."""
    from launcher.measure import tune

    try:
        return _measure_one(ctx, k)
    except KeyboardInterrupt:
        ctx.interrupted = True
        raise tune.Stop("interrupted (Ctrl-C)") from None


def _measure_one(ctx: _Ctx, k: Any) -> Any:
    from launcher.llama import bench as bench_run
    from launcher.measure import tune

    now = time.monotonic()
    left = ctx.deadline - now
    if ctx.interrupted:
        raise tune.Stop("interrupted (Ctrl-C)")
    if left < 1:
        raise tune.Stop("the budget is spent")
    p = None if k.baseline else _plan_for(ctx, k)
    argv = bench_argv(ctx.bench, ctx.model_path, p, pp=ctx.args.pp, tg=ctx.args.tg, reps=ctx.args.repetitions,
                      depth=ctx.depth, gpus=bool(ctx.machine.gpus), fit_target_mib=ctx.fit_target_mib,
                      baseline_flags=ctx.baseline_flags, empty_too=True)  # fmt: skip
    ctx.count += 1
    if not ctx.args.json:
        done = ctx.count - 1
        eta = (now - ctx.start) / done * (ctx.planned - done) if done else None
        eta_text = f", about {min(eta, left):.0f} s left" if eta is not None else ""
        _say(f"  [{ctx.count}/{ctx.planned}{eta_text}] {k.label}")
    if p is not None and not p.fits:
        return tune.Measured(k, tuple(argv), error="the plan does not fit: " + "; ".join(p.problems), depth=ctx.depth)
    res = bench_run.run(argv, timeout_s=left, gpus=bool(ctx.machine.gpus))
    d = ctx.depth
    m = tune.Measured(k, tuple(argv), res.tps(prompt=True, depth=d), res.tps(prompt=False, depth=d), res.peak_bytes,
                      res.error, res.seconds, res.samples(prompt=True, depth=d), res.samples(prompt=False, depth=d),
                      res.busy_share, depth=d, tg_empty=res.samples(prompt=False, depth=0) if d else ())  # fmt: skip
    if not ctx.args.json:
        figures = f"pp {m.pp_tps or 0:.1f} t/s, tg {m.tg_tps or 0:.1f} t/s" if not m.error else f"failed: {m.error}"
        _say(f"      {figures}")
    if res.error and "budget" in res.error:
        raise tune.Stop("the budget is spent")
    return m


def _check_bench(ctx: _Ctx, start: Any) -> None:
    """This llama-bench takes what tune will ask of it (an older one may lack -d or -fa's values): said at once,
    naming the flag, before anything is measured."""
    from launcher.llama.options import check_argv

    argv = bench_argv(ctx.bench, ctx.model_path, start, pp=ctx.args.pp, tg=ctx.args.tg, reps=1, depth=256)
    check_argv(argv[len(ctx.found.tool("llama-bench")) :], ctx.found.help("llama-bench"), ctx.found.label)


def _refit(machine: Machine, build_key: str, key: str, measured: list[Any], ctx: _Ctx) -> None:
    """Feed the decode measurements back into this machine's constants (launcher/speed.py)."""
    from launcher.measure import calibrate as calibration
    from launcher.measure import tune
    from launcher.model.tensors import loaded_tensors
    from launcher.plan.predict import bytes_per_token

    obs = []
    for m in measured:
        if m.error or not m.tg_tps or (m.depth and not m.tg_empty) or m.via != "llama-bench":
            continue  # at depth attention reads the cache too (the empty-cache figure is used); drafting differs
        if m.knobs.baseline:
            if machine.gpus:
                continue  # llama.cpp's fit placed it: the bytes per device are not known here
            placement = {t.name: "CPU" for t in ctx.tensors.tensors}
        else:
            placement = _plan_for(ctx, m.knobs).placement
        loaded = loaded_tensors(ctx.tensors, ctx.hp.n_layer, ctx.hp.n_layer_nextn)  # NextN layers: not read
        per = bytes_per_token(loaded, ctx.hp, placement)
        threads = m.knobs.threads if not m.knobs.baseline else machine.cores
        obs.append(tune.observation(m, threads, ctx.hp.n_layer, per, f"tune:{key}"))
    calibration.add_observations(machine, build_key, obs)


def _print_table(
    measured: list[Any], best: Any, base: Any, goal: Any, stopped: str | None, *, saved: bool = True,
    depth: int = 0, pp: int = 512, tg: int = 128,
) -> None:  # fmt: skip
    from launcher.measure import tune
    from launcher.units import fmt_bytes

    at = f" @ d{depth}" if depth else ""  # llama-bench's own label: pp512 @ d4096
    print(f"{'':2}{'candidate':<44}{f'pp{pp}{at}':>15}{f'tg{tg}{at}':>15}  {'peak memory':<18}note")
    for m in measured:
        mark = "> " if best is not None and m is best else "  "
        peak = ", ".join(f"{d} {fmt_bytes(n)}" for d, n in sorted(m.peak_bytes.items()) if n)
        pp_t = f"{m.pp_tps:.1f}" if m.pp_tps else "-"
        tg_t = f"{m.tg_tps:.1f}" if m.tg_tps else "-"
        note = m.error or ("within noise" if best is not None and tune.within_noise(m, best, goal) else "")
        if m.via != "llama-bench":
            note = f"through {m.via} (prompt: all {depth + pp} tokens)" + (f"; {note}" if note else "")
        print(f"{mark}{m.label:<44}{pp_t:>15}{tg_t:>15}  {peak:<18}{note}")
    if stopped:
        print(f"Stopped early: {stopped}; what was measured is kept.")
    if best is None:
        return
    print(_verdict(measured, best, base, goal))
    use = ("`runq run` and `runq service install` use it on this machine" if saved
           else "not saved: measured under --gpu-limit, and runs use the whole GPU")  # fmt: skip
    print(f"  {use}.")


def _verdict(measured: list[Any], best: Any, base: Any, goal: Any) -> str:
    """'Chosen for GOAL: LABEL (WHAT N x llama.cpp's default, beyond the ±S% its runs spread)', and where a
    candidate scored higher within noise, that it is not a win."""
    from launcher.measure import tune

    b, s = (tune.score(base, goal) if base else None), tune.score(best, goal)
    text = f"Chosen for {goal}: {best.label}"
    if not b:
        text += " (llama.cpp's default did not run)"
    elif best is not base and s:
        what = {"decode": "decode", "prefill": "prompts", "balanced": "a 512+128-token turn"}[goal]
        text += (f" ({what} {s / b:.2f}x llama.cpp's default, beyond the ±{100 * tune.noise(best, base, goal):.0f}%"
                 " its runs spread)")  # fmt: skip
    top = tune.fastest(measured, goal)
    if top is not None and s and tune.within_noise(top, best, goal):
        st = tune.score(top, goal) or 0.0
        text += (f"; the fastest, {top.label}, measured {st / s:.2f}x it, within the"
                 f" ±{100 * tune.noise(top, best, goal):.0f}% its runs spread: not a win")  # fmt: skip
    return text
