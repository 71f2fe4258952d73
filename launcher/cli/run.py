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

from launcher.cli.common import ensure_binaries, ensure_model, plan_for, read_api_key, say, server_options
from launcher.errors import EXIT_INTERRUPTED, EXIT_OK

if TYPE_CHECKING:
    from pathlib import Path

    from launcher.pipeline.plan import Planned
    from launcher.plan.inputs import ServerOptions
OOM_ATTEMPTS = 3


@dataclass(frozen=True)
class Launching:
    """What `run` starts: the plan, and where its model, binaries and the user's own flags are."""

    planned: Planned
    model: str
    bin_dir: Path | None
    extra: tuple[str, ...]

    def argv(self, opts: ServerOptions | None) -> list[str]:
        from launcher.pipeline.plan import command

        return command(self.planned, server=opts, model=self.model, bin_dir=self.bin_dir, extra=self.extra)


def cmd_run(args: argparse.Namespace) -> int:
    from launcher.llama.argv import shell_quote
    from launcher.view import plan as render_plan

    if not args.server:
        _chat_flags(args)
    opts = server_options(args) if args.server else None
    key = read_api_key(opts) if opts else None
    calibrate = not args.dry_run and not getattr(args, "no_calibrate", False)
    p, passthrough = plan_for(args, server=args.server, calibrate=calibrate)
    plan = p.plan
    slots = f" ({plan.slots} server slot{'s' if plan.slots > 1 else ''})" if args.server else ""
    print(f"{p.target.name} {p.quant}: {plan.ctx:,} tokens of context{slots}, "
          f"{plan.predicted_tg_tps:.1f} tokens/s predicted ({p.target.sizes}; {plan.speed_source})")  # fmt: skip
    if p.tuned:
        print(f"  {p.tuned.note}")
    print(f"  KV cache and compute: {p.sizes}")
    for line in (*render_plan.memory_table(plan), *(f"  {x}" for x in render_plan.placement_lines(plan))):
        print(line)
    for note in p.machine.notes:
        print(f"Note: {note}", file=sys.stderr)
    dry = args.dry_run
    model_path = ensure_model(p.target, p.quant, auto=args.auto, yes=args.yes, dry=dry)
    quirks = tuple(p.target.profile.build_quirks) if p.target.profile else ()
    binaries = ensure_binaries(
        args.llama_bin, args.source, allowed=args.auto or bool(args.llama_bin), dry=dry, quirks=quirks
    )
    if p.machine.source != "probed" and p.machine.gpus and not _here_has_gpu():
        say("Note: the plan is for the GPU you described; this machine has none: llama.cpp runs it all on the CPU.")
    extra = list(passthrough)
    if args.verify_tensors and "-lv" not in extra:
        extra += ["-lv", "5"]
    run = Launching(p, str(model_path), binaries, tuple(extra))
    argv = run.argv(opts)
    if dry:
        print(f"[dry-run] would run: {shell_quote([a if a != key else '<api key>' for a in argv])}")
        return EXIT_OK
    if opts is None:
        say(f"$ {shell_quote(argv)}")
        from launcher.llama.procs import run_foreground

        return run_foreground(argv)  # the terminal (and Ctrl-C) is llama-cli's now; it dies with runq
    return serve(run, opts, key, verify_tensors=args.verify_tensors)


def _chat_flags(args: argparse.Namespace) -> None:
    """A chat (llama-cli) has no server: a bad server flag is still a bad value (exit 2), a good one is said to
    do nothing."""
    from launcher.cli.common import warn
    from launcher.plan.inputs import check_port, check_timeout

    check_port(args.port)
    check_timeout(args.timeout)
    given = [f for f, v, default in (("--host", args.host, "127.0.0.1"), ("--port", args.port, 8080),
             ("--api-key", args.api_key, None), ("--api-key-file", args.api_key_file, None),
             ("--insecure", args.insecure, False), ("--timeout", args.timeout, 900)) if v != default]  # fmt: skip
    if given:
        warn(f"{', '.join(given)} apply to a server only: add --server, or leave them out for a chat")


def _here_has_gpu() -> bool:
    from launcher.machine.probe import probe_gpus

    return bool(probe_gpus()[0])


def start_verified(run: Launching, opts: ServerOptions, key: str | None) -> tuple[Any, float, Launching]:
    """Start llama-server and wait until it answers; after an out-of-memory while loading, re-plan with more
    margin (the pipeline's replan_after_oom) and start again, up to OOM_ATTEMPTS times in all."""
    from dataclasses import replace

    from launcher.llama import server as runner
    from launcher.llama.rpc import name_dead
    from launcher.paths import logs_dir
    from launcher.pipeline.plan import replan_after_oom

    attempt = 1
    while True:
        log_path = logs_dir() / f"llama-server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        say(f"Log: {log_path}")
        server = runner.start(run.argv(opts), log_path, opts.host, opts.port, key)
        try:
            return server, runner.wait_healthy(server, opts.timeout_s), run
        except runner.ServerFailed as e:
            if e.kind != "oom" or attempt >= OOM_ATTEMPTS:
                raise name_dead(e, run.planned.plan.rpc) from None  # a lost worker is named
            planned, again = replan_after_oom(run.planned)
            attempt += 1
            say(again.message(attempt, OOM_ATTEMPTS))
            run = replace(run, planned=planned)


def serve(run: Launching, opts: ServerOptions, key: str | None, *, verify_tensors: bool) -> int:
    """Start, wait, verify the placement against llama.cpp's log, then serve until Ctrl-C."""
    from launcher.llama import log as llama_log
    from launcher.llama import server as runner

    server, took, run = start_verified(run, opts, key)
    p = run.planned
    plan = p.plan
    try:
        report = llama_log.parse(server.log_text())
        check = llama_log.verify(plan, report, has_gpu=bool(p.machine.gpus) and p.machine.source == "probed",
                                 expected_overrides=plan.moved if verify_tensors else None,
                                 tensors=p.choice.chosen.source.tensors)  # fmt: skip
        print(f"llama-server is ready at {listening_url(opts)} (loaded in {took:.1f} s); memory per device:")
        for line in check.lines:
            print(f"  {line}")
        if not check.ok:
            for problem in check.problems:
                print(f"Error: {problem}", file=sys.stderr)
            server.stop()
            return 1
        from launcher.view.clients import client_lines

        for line in client_lines(server.url, opts.api_key_file, server.api_key is not None, _model_ids(server)):
            print(line)
        print("Serving. Ctrl-C stops it.", flush=True)
        code = server.proc.wait()
        from launcher.llama.rpc import name_dead

        raise name_dead(runner.died(server, code), plan.rpc)
    except KeyboardInterrupt:
        print("\nStopping llama-server…", file=sys.stderr)
        server.stop()
        return EXIT_INTERRUPTED


def _model_ids(server: Any) -> list[str]:
    """The model names the API lists (llama-server: the file's name, or its --alias)."""
    try:
        return [str(m.get("id")) for m in server.request("/v1/models", timeout=10).get("data", [])]
    except (OSError, ValueError):
        return []


def listening_url(opts: ServerOptions) -> str:
    """Where clients connect, as the user asked for it (0.0.0.0 says: every address of this machine)."""
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    url = f"http://{host}:{opts.port}"
    return url + (" (every address of this machine)" if opts.host in ("0.0.0.0", "::") else "")
