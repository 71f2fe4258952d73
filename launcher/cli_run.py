"""`runq run` / `runq MODEL --auto` / `runq demo`: from nothing to a running, verified chat or server.

Part of the CLI layer (it prints and decides exit codes); every decision is made by the core (inputs, target,
choose, argv) and every side effect by the edges (pull, build, runner). `--dry-run` prints each step and the
exact command instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.cli_common import (
    ensure_binaries,
    ensure_model,
    llama_sizes,
    plan_inputs,
    read_api_key,
    resolve_machine,
    resolve_target,
    say,
    server_options,
)
from launcher.errors import EXIT_INTERRUPTED, EXIT_OK
from launcher.measured import tuned_request, with_speed

if TYPE_CHECKING:
    from launcher.argv import Launch
    from launcher.choose import Choice
    from launcher.inputs import ServerOptions
    from launcher.machine import Machine
    from launcher.measured import Tuned
    from launcher.planner import Request
    from launcher.target import ModelTarget

DEMO_SPEC = {"arch": "deepseek2", "n_layer": 6, "n_embd": 256, "n_ff": 512, "n_ff_exp": 256, "n_expert": 16}
OOM_ATTEMPTS = 3


@dataclass
class Planned:
    """What `run` decided before it starts anything."""

    machine: Machine
    target: ModelTarget
    request: Request
    choice: Choice
    passthrough: list[str]
    sizes: str = ""  # where the KV cache and compute sizes came from (llama.cpp's projection or runq's estimate)
    tuned: Tuned | None = None  # a saved `runq tune` result for this model here (launcher/measured.py)

    def argv(self, launch: Launch) -> list[str]:
        """The llama.cpp command: the plan's, with the tuned knobs the plan does not carry."""
        from launcher.argv import build_argv

        argv = build_argv(self.choice.chosen.plan, launch)
        return self.tuned.argv(argv) if self.tuned else argv


def plan_run(args: argparse.Namespace, *, server: bool) -> Planned:
    """The machine, the model and the checked request (flags after `--` that pin the plan win), then the choice."""
    from launcher.choose import choose
    from launcher.inputs import buffers_of, planning_request, split_extra

    pins, passthrough = split_extra(getattr(args, "extra", []))
    inputs = plan_inputs(args, server=server).pinned(pins)
    llama_bin = getattr(args, "llama_bin", None)
    machine = with_speed(resolve_machine(args), llama_bin, calibrate_now=not args.dry_run, say=say)
    target = resolve_target(args)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    req, pinned, tuned = tuned_request(machine, target, req, pins, llama_bin)  # a saved `runq tune` result
    choice = choose(target.name, machine, list(target.sources), req, pinned=pinned,
                    ctx_pinned=inputs.ctx is not None)  # fmt: skip
    choice, projected = llama_sizes(args, target, machine, req, choice)
    return Planned(machine, target, req, choice, passthrough, sizes=projected, tuned=tuned)


def cmd_run(args: argparse.Namespace) -> int:
    from launcher import build, render_plan
    from launcher.argv import launch_for, shell_quote

    opts = server_options(args) if args.server else None
    key = read_api_key(opts) if opts else None
    p = plan_run(args, server=args.server)
    chosen = p.choice.chosen
    plan = chosen.plan
    print(f"{p.target.name} {chosen.source.name}: {plan.ctx:,} tokens of context, "
          f"{plan.predicted_tg_tps:.1f} tokens/s predicted ({p.target.sizes}; {plan.speed_source})")  # fmt: skip
    if p.tuned:
        print(f"  {p.tuned.note}")
    print(f"  KV cache and compute: {p.sizes}")
    for line in (*render_plan.memory_table(chosen.plan), *(f"  {x}" for x in render_plan.placement_lines(chosen.plan))):
        print(line)
    for note in p.machine.notes:
        print(f"Note: {note}", file=sys.stderr)
    dry = args.dry_run
    model_path = ensure_model(p.target, chosen.source.name, auto=args.auto, yes=args.yes, dry=dry)
    quirks = tuple(p.target.profile.build_quirks) if p.target.profile else ()
    binaries = ensure_binaries(
        args.llama_bin, args.source, allowed=args.auto or bool(args.llama_bin), dry=dry, quirks=quirks
    )
    if p.machine.source != "probed" and p.machine.gpus and not _here_has_gpu():
        say("Note: the plan is for the GPU you described; this machine has none: llama.cpp runs it all on the CPU.")
    extra = list(p.passthrough)
    if args.verify_tensors and "-lv" not in extra:
        extra += ["-lv", "5"]
    launch = launch_for(str(binaries / ("llama-server" if args.server else "llama-cli")), str(model_path),
                        p.target.profile, server=opts, extra=extra, flags=build.binary_flags(binaries),
                        gguf_sampling=chosen.source.sampling)  # fmt: skip
    argv = p.argv(launch)
    if dry:
        print(f"[dry-run] would run: {shell_quote([a if a != key else '<api key>' for a in argv])}")
        return EXIT_OK
    if opts is None:
        say(f"$ {shell_quote(argv)}")
        from launcher.procs import run_foreground

        return run_foreground(argv)  # the terminal (and Ctrl-C) is llama-cli's now; it dies with runq
    return serve(p, launch, opts, key, verify_tensors=args.verify_tensors)


def _here_has_gpu() -> bool:
    from launcher.hardware import probe_gpus

    return bool(probe_gpus()[0])


def start_verified(p: Planned, launch: Launch, opts: ServerOptions, key: str | None) -> tuple[Any, float, Planned]:
    """Start llama-server and wait until it answers; after an out-of-memory while loading, re-plan with more
    margin (the core's replan_after_oom) and start again, up to OOM_ATTEMPTS times in all."""
    from dataclasses import replace

    from launcher import runner
    from launcher.choose import replan_after_oom
    from launcher.paths import logs_dir
    from launcher.workers import name_dead

    attempt = 1
    while True:
        log_path = logs_dir() / f"llama-server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        say(f"Log: {log_path}")
        server = runner.start(p.argv(launch), log_path, opts.host, opts.port, key)
        try:
            return server, runner.wait_healthy(server, opts.timeout_s), p
        except runner.ServerFailed as e:
            if e.kind != "oom" or attempt >= OOM_ATTEMPTS:
                raise name_dead(e, p.choice.chosen.plan.rpc) from None  # a lost worker is named
            again = replan_after_oom(p.machine, p.choice, p.request)
            attempt += 1
            say(again.message(attempt, OOM_ATTEMPTS))
            p = replace(p, choice=again.choice, request=again.request)


def serve(p: Planned, launch: Launch, opts: ServerOptions, key: str | None, *, verify_tensors: bool) -> int:
    """Start, wait, verify the placement against llama.cpp's log, then serve until Ctrl-C."""
    from launcher import llama_log, runner

    server, took, p = start_verified(p, launch, opts, key)
    plan = p.choice.chosen.plan
    try:
        report = llama_log.parse(server.log_text())
        check = llama_log.verify(plan, report, has_gpu=bool(p.machine.gpus) and p.machine.source == "probed",
                                 expected_overrides=plan.moved if verify_tensors else None)  # fmt: skip
        print(f"llama-server is ready at {listening_url(opts)} (loaded in {took:.1f} s); memory per device:")
        for line in check.lines:
            print(f"  {line}")
        if not check.ok:
            for problem in check.problems:
                print(f"Error: {problem}", file=sys.stderr)
            server.stop()
            return 1
        print("Serving. Ctrl-C stops it.", flush=True)
        code = server.proc.wait()
        from launcher.workers import name_dead

        raise name_dead(runner.died(server, code), plan.rpc)
    except KeyboardInterrupt:
        print("\nStopping llama-server…", file=sys.stderr)
        server.stop()
        return EXIT_INTERRUPTED


def listening_url(opts: ServerOptions) -> str:
    """Where clients connect, as the user asked for it (0.0.0.0 says: every address of this machine)."""
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    url = f"http://{host}:{opts.port}"
    return url + (" (every address of this machine)" if opts.host in ("0.0.0.0", "::") else "")


# --- demo --------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from launcher import render_plan, runner
    from launcher.argv import build_argv, launch_for
    from launcher.choose import gpu_for_half_the_experts
    from launcher.hardware import probe
    from launcher.inputs import check_port, check_timeout
    from launcher.machine import GPU
    from launcher.model import open_local
    from launcher.paths import cache_dir, logs_dir
    from launcher.planner import Request, plan
    from launcher.synth import SynthSpec, write_model

    if args.port:
        check_port(args.port)
    check_timeout(args.timeout)
    print("runq demo: a tiny random-weight MoE model (deepseek2 architecture), generated here — its output is")
    print("gibberish by design. What is real: the plan, llama.cpp, the placement it reports, the server.\n")
    path = cache_dir() / "demo" / "runq-demo.gguf"
    if not path.is_file():
        write_model(SynthSpec(**DEMO_SPEC), path)  # type: ignore[arg-type]
    model = open_local(path)
    req = Request(ctx=4096, ubatch=512, server=True)
    vram = gpu_for_half_the_experts(model.tensors, model.hparams, req.ctx, req.ubatch or 512)
    here = probe(cpu_details=False)
    pretend = with_gpus(here, [GPU(0, "pretend GPU", vram, vram)])
    p = plan(pretend, model.tensors, model.hparams, req)
    size = model.tensors.total_bytes / 2**20
    print(f"Plan against a pretend {vram / 2**20:.0f} MiB GPU ({len(model.tensors)} tensors, {size:.1f} MiB of "
          "weights):")  # fmt: skip
    for line in render_plan.placement_lines(p):
        print(f"  {line}")
    print(f"  -ot {' -ot '.join(str(o) for o in p.overrides)}\n")
    binaries = ensure_binaries(None, args.source, allowed=True, dry=False)
    from launcher.inputs import ServerOptions

    opts = ServerOptions(port=args.port or runner.free_port(), timeout_s=args.timeout)
    argv = build_argv(p, launch_for(str(binaries / "llama-server"), str(path), None, server=opts, extra=("-lv", "5")))
    log_path = logs_dir() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    print(f"Starting llama-server on port {opts.port} (log: {log_path})…")
    server = runner.start(argv, log_path, opts.host, opts.port)
    try:
        took = runner.wait_healthy(server, opts.timeout_s)
        like = p if here.gpus else _demo_plan_here(here, path, model, req, binaries)
        return _demo_check(server, took, p, like)
    finally:
        server.stop()


def _demo_plan_here(here: Machine, path: Any, model: Any, req: Request, binaries: Any) -> Any:
    """What runs here when there is no GPU: the same model and flags planned for this CPU, on llama.cpp's sizes."""
    from dataclasses import replace

    from launcher import fitparams
    from launcher.planner import plan

    cpu_only = with_gpus(here, [])
    p = plan(cpu_only, model.tensors, model.hparams, req)
    oracle = fitparams.Oracle.find(binaries)
    if oracle is None:
        return p
    try:
        proj = fitparams.project(oracle, path, p)
    except fitparams.ProjectionFailed as e:
        print(f"  (llama.cpp could not project the demo model: {e.message})")
        return p
    return plan(cpu_only, model.tensors, model.hparams, replace(req, projections=(proj,)))


def _ask_demo(server: Any) -> dict[str, Any]:
    """One chat request. Random weights now and then end a reply inside a multi-byte character, which
    llama-server answers with HTTP 500 ("invalid UTF-8 byte"): ask again with another seed, at most twice."""
    import urllib.error

    body = {"messages": [{"role": "user", "content": "Say hello!"}], "max_tokens": 24, "temperature": 0.8}
    for seed in (1, 2, 3):
        try:
            return server.request("/v1/chat/completions", {**body, "seed": seed})
        except urllib.error.HTTPError as e:
            if e.code != 500 or seed == 3:
                raise
    raise AssertionError("unreachable")


def _demo_check(server: Any, took: float, p: Any, like: Any) -> int:
    """Ask the demo server once, then check its placement (p's overrides) and its memory, column by column,
    against llama.cpp's own log (`like`: the plan of what really runs here)."""
    from launcher import llama_log

    answer = _ask_demo(server)
    reply = answer["choices"][0]["message"].get("content", "")
    speed = answer.get("timings", {}).get("predicted_per_second")
    print(f"Ready in {took:.1f} s. Asked 'Say hello!', the model answered (gibberish by design):\n  {reply!r}")
    if speed:
        print(f"  ({speed:.0f} tokens/s generated)")
    check = llama_log.verify(like, llama_log.parse(server.log_text()), has_gpu=False, expected_overrides=p.moved)
    print("\nVerification against llama.cpp's own log:")
    if like is not p:
        print("  (no GPU here: llama.cpp runs the pretend GPU's share on the CPU too, so the prediction compared")
        print("  is runq's plan of the same flags for this machine's CPU)")
    for line in check.lines:
        print(f"  {line}")
    for prob in check.problems:
        print(f"Error: {prob}", file=sys.stderr)
    return EXIT_OK if check.ok else 1


def with_gpus(machine: Machine, gpus: list[Any]) -> Machine:
    from dataclasses import replace

    return replace(machine, gpus=tuple(gpus), gpu_note=None, source="mixed")
