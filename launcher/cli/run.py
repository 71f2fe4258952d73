"""`runq run` / `runq MODEL --auto`: from nothing to a running, verified chat or server.

CLI layer (prints and decides exit codes); every decision is made by the core and every side effect by the edges.
`--dry-run` prints each step and the exact command instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.cli.common import (
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
from launcher.pipeline.measured import tuned_request, with_speed

if TYPE_CHECKING:
    from launcher.llama.argv import Launch
    from launcher.machine.spec import Machine
    from launcher.pipeline.measured import Tuned
    from launcher.pipeline.target import ModelTarget
    from launcher.plan.choose import Choice
    from launcher.plan.inputs import ServerOptions
    from launcher.plan.types import Request
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
        from launcher.llama.argv import build_argv

        argv = build_argv(self.choice.chosen.plan, launch)
        return self.tuned.argv(argv) if self.tuned else argv


def plan_run(args: argparse.Namespace, *, server: bool) -> Planned:
    """The machine, the model and the checked request (flags after `--` that pin the plan win), then the choice."""
    from launcher.plan.choose import choose
    from launcher.plan.inputs import buffers_of, planning_request, split_extra

    pins, passthrough = split_extra(getattr(args, "extra", []))
    inputs = plan_inputs(args, server=server).pinned(pins)
    llama_bin = getattr(args, "llama_bin", None)
    calibrate = not args.dry_run and not getattr(args, "no_calibrate", False)
    machine = with_speed(resolve_machine(args), llama_bin, calibrate_now=calibrate, say=say)
    target = resolve_target(args)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    req, pinned, tuned = tuned_request(machine, target, req, pins, llama_bin)  # a saved `runq tune` result
    choice = choose(target.name, machine, list(target.sources), req, pinned=pinned,
                    ctx_pinned=inputs.ctx is not None)  # fmt: skip
    choice, projected = llama_sizes(args, target, machine, req, choice)
    return Planned(machine, target, req, choice, passthrough, sizes=projected, tuned=tuned)


def cmd_run(args: argparse.Namespace) -> int:
    from launcher.llama import build
    from launcher.llama.argv import launch_for, shell_quote
    from launcher.view import plan as render_plan

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
        from launcher.llama.procs import run_foreground

        return run_foreground(argv)  # the terminal (and Ctrl-C) is llama-cli's now; it dies with runq
    return serve(p, launch, opts, key, verify_tensors=args.verify_tensors)


def _here_has_gpu() -> bool:
    from launcher.machine.probe import probe_gpus

    return bool(probe_gpus()[0])


def start_verified(p: Planned, launch: Launch, opts: ServerOptions, key: str | None) -> tuple[Any, float, Planned]:
    """Start llama-server and wait until it answers; after an out-of-memory while loading, re-plan with more
    margin (the core's replan_after_oom) and start again, up to OOM_ATTEMPTS times in all."""
    from dataclasses import replace

    from launcher.llama import server as runner
    from launcher.llama.rpc import name_dead
    from launcher.paths import logs_dir
    from launcher.plan.choose import replan_after_oom

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
    from launcher.llama import log as llama_log
    from launcher.llama import server as runner

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
        from launcher.llama.rpc import name_dead

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
