"""`runq serve [MODEL …]`: one llama-server router for every model on disk (or those named), each model with its
own runq plan for this machine, loaded on the first request for it.

CLI layer. Each model is planned by the one pipeline exactly as `runq run MODEL --server` plans it (as the only
model resident: `--models-max 1` by default; more only when the plans fit together, checked here), rendered into
the same llama-server command, and that command becomes the model's preset section (llama/preset.py). After the
router answers, runq checks that it would run every model with exactly the planned command, prints what a client
needs, and verifies each model's placement in llama.cpp's log when it loads (unloading one that went wrong).
Ctrl-C, SIGTERM and SIGHUP stop the router and every model it started.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.cli.common import read_api_key, say, server_options
from launcher.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError

if TYPE_CHECKING:
    from launcher.cli.routing import Routing, Served
    from launcher.llama.router import Router
    from launcher.plan.inputs import ServerOptions

POLL_S = 1.0


def cmd_serve(args: argparse.Namespace) -> int:
    from launcher.llama.argv import shell_quote
    from launcher.paths import logs_dir

    if args.models_max < 1:
        raise UsageError(f"--models-max {args.models_max}: must be 1 or more", hint="1: one model loaded at a time")
    opts = server_options(args)
    key = read_api_key(opts)
    run_dir = logs_dir() / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    from launcher.cli.routing import routing

    r = routing(args, opts, run_dir / "presets.ini", run_dir, dry=args.dry_run)
    for s in r.models:
        plan = s.planned.plan
        print(f"{s.id}: {s.planned.target.name} {s.planned.quant}, {plan.ctx:,} tokens of context, "
              f"{plan.predicted_tg_tps:.1f} tokens/s predicted (alone on this machine)")  # fmt: skip
    if args.dry_run:
        print(f"[dry-run] would write {run_dir / 'presets.ini'}:")
        sys.stdout.write(r.preset_text)
        print(f"[dry-run] would run: {shell_quote([a if a != key else '<api key>' for a in r.argv])}")
        return EXIT_OK
    from launcher.service.manage import write_atomic

    write_atomic(run_dir / "presets.ini", r.preset_text, mode=0o600)
    return serve_router(r, opts, key, run_dir)


def serve_router(r: Routing, opts: ServerOptions, key: str | None, run_dir: Path) -> int:
    """Start the router, check what it would run, print what clients need, watch each model load until stopped."""
    from launcher.llama import router as routers
    from launcher.llama.preset import DEFAULT_STOP_TIMEOUT_S
    from launcher.view.clients import client_lines

    say(f"Log: {run_dir / 'router.log'} (each model's own log beside it)")
    router = routers.start(r.argv, run_dir / "router.log", opts.host, opts.port, key, empty_cache=run_dir / "empty",
                           stop_timeout_s=DEFAULT_STOP_TIMEOUT_S)  # fmt: skip
    try:
        took = routers.wait_healthy(router, opts.timeout_s)
        check_router(router, r)
        print(f"Router ready at {router.url} in {took:.1f} s: {len(r.models)} model(s), at most {r.models_max} "
              f"loaded at a time, each loaded on its first request.")  # fmt: skip
        for line in client_lines(router.url, opts.api_key_file, key is not None, [s.id for s in r.models]):
            print(line)
        print("Serving. Ctrl-C stops the router and every model it started.", flush=True)
        return watch(router, r, run_dir)
    except KeyboardInterrupt:
        print("\nStopping the router and its models…", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        router.stop()


def check_router(router: Router, r: Routing) -> None:
    """The router lists exactly our models and would start each with exactly the planned command."""
    from launcher.errors import ServerFailed
    from launcher.llama.preset import router_problems
    from launcher.llama.router import served_args

    problems = router_problems(served_args(router.models()), {s.id: s.argv for s in r.models}, r.options)
    if problems:
        hint = "this is a bug in runq's preset; `runq run MODEL --server` runs each model as planned"
        raise ServerFailed("the router would not run the models as planned: " + "; ".join(problems), hint=hint)


def watch(router: Router, r: Routing, run_dir: Path) -> int:
    """Until the router stops: each model that loads is checked against its plan in its own log."""
    from launcher.llama import server as single
    from launcher.llama.router import states

    ours = {s.id: s for s in r.models}
    checked: set[str] = set()
    while True:
        code = router.server.proc.poll()
        if code is not None:
            raise single.died(router.server, code)
        for model_id, value in states(router).items():
            if value != "loaded":
                checked.discard(model_id)
            elif model_id in ours and model_id not in checked:
                checked.add(model_id)
                verify_loaded(router, ours[model_id], run_dir / f"{model_id}.log")
        time.sleep(POLL_S)


def verify_loaded(router: Router, s: Served, log_path: Path) -> None:
    """A model just loaded: llama.cpp's memory per device against its plan; one that fell back to the CPU
    when its plan uses a GPU is unloaded (the next request loads it again)."""
    from launcher.llama import log as llama_log

    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    p = s.planned
    has_gpu = bool(p.machine.gpus) and p.machine.source == "probed"
    check = llama_log.verify(p.plan, llama_log.parse(text), has_gpu=has_gpu)
    print(f"{s.id} loaded; memory per device:", flush=True)
    for line in check.lines:
        print(f"  {line}")
    if not check.ok:
        for problem in check.problems:
            print(f"Error: {s.id}: {problem}: unloading it", file=sys.stderr)
        router.unload(s.id)
    sys.stdout.flush()
