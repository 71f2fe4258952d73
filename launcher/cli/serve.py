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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.cli.common import ensure_binaries, ensure_model, read_api_key, resolve_machine, say, server_options
from launcher.errors import EXIT_INTERRUPTED, EXIT_OK, DoesNotFitError, RunqError, UsageError

if TYPE_CHECKING:
    from launcher.llama.router import Router
    from launcher.machine.spec import Machine
    from launcher.pipeline.plan import Ask, Planned
    from launcher.plan.inputs import ServerOptions

POLL_S = 1.0


@dataclass(frozen=True)
class Served:
    """One model of the router: its API id, its plan, and the llama-server command `runq run --server` runs."""

    id: str
    planned: Planned
    argv: list[str]  # binary first, with the router-owned flags still in (the preset drops them)


@dataclass(frozen=True)
class Routing:
    """Everything the router runs: its models, its preset, its own command."""

    models: list[Served]
    models_max: int
    bin_dir: Path
    preset_text: str
    argv: list[str]
    options: dict[str, str]  # the build's option spellings (empty without a build: a dry run before `runq build`)


def asks(args: argparse.Namespace) -> list[Ask]:
    """An Ask per model: the ones named, else every complete quant on disk (a catalog model by its name and quant,
    so its profile, tune result and cache path are the ones `runq run NAME --quant Q` uses; read offline)."""
    from launcher.catalog.profiles import find_profile
    from launcher.cli.common import ask_for
    from launcher.hub.local import scan_hf_cache

    def ask(model: str, quant: str | None, **more: Any) -> Ask:
        ns = argparse.Namespace(**{**vars(args), "model": model, "quant": quant})
        return replace(ask_for(ns, server=True)[0], **more)

    if args.models:
        return [ask(m, None) for m in args.models]
    found = [q for q in scan_hf_cache()[0] if q.complete]
    if not found:
        hint = "`runq pull MODEL` downloads one; or name .gguf files: runq serve A.gguf B.gguf"
        raise UsageError("no complete model on disk to serve", hint=hint)
    out = []
    for q in found:
        profile = find_profile(q.repo)
        out.append(ask(profile.name, q.name, network=False) if profile is not None else ask(str(q.first), None))
    return out


def id_source(p: Planned) -> str:
    """What a model's API id is made from: NAME-QUANT for a catalog or Hub model, the file's name for a file."""
    t = p.target
    if t.model_path is None and t.profile is not None:
        return f"{t.profile.name}-{p.quant}"
    name = Path(t.key).name  # as given (a Hugging Face cache file is a link to a blob)
    return name.split("-00001-of-")[0].removesuffix(".gguf")


def plan_models(args: argparse.Namespace, opts: ServerOptions, machine: Machine, *, dry: bool) -> list[Served]:
    """Every model planned as `runq run MODEL --server` plans it; on-disk models that do not fit are left out."""
    from launcher.cli.common import show_profile_notes
    from launcher.llama.preset import unique_ids
    from launcher.pipeline.plan import command, plan

    show_profile_notes()
    calibrate = not dry and not args.no_calibrate
    served: list[Served] = []
    bins: dict[Path, list[str]] = {}
    for ask in asks(args):
        try:
            p = plan(ask, machine, calibrate=calibrate, say=say)
        except DoesNotFitError as e:
            if args.models:
                raise
            say(f"Note: left out {ask.model} {ask.quant or ''}: {e.message}")
            continue
        model_path = ensure_model(p.target, p.quant, auto=args.auto, yes=args.yes, dry=dry)
        quirks = tuple(p.target.profile.build_quirks) if p.target.profile else ()
        binaries = ensure_binaries(args.llama_bin, args.source, allowed=args.auto or bool(args.llama_bin), dry=dry,
                                   quirks=quirks)  # fmt: skip
        bins.setdefault(binaries, []).append(id_source(p))
        argv = command(p, server=opts, model=str(Path(model_path).absolute()), bin_dir=binaries)
        served.append(Served(id_source(p), p, argv))
    if len(bins) > 1:
        which = "; ".join(f"{', '.join(ids)}: {b}" for b, ids in bins.items())
        hint = "serve them in separate routers (runq serve A --port 8080, runq serve B --port 8081)"
        raise UsageError(f"these models need different llama.cpp builds ({which}): one router runs one", hint=hint)
    if not served:
        raise DoesNotFitError("none of the models on disk fits this machine", hint="see `runq models --local`")
    ids = unique_ids(s.id for s in served)
    return [replace(s, id=i) for s, i in zip(served, ids, strict=True)]


def check_together(served: list[Served], models_max: int) -> None:
    """--models-max N > 1 only when any N of the plans fit together; says so either way."""
    from launcher.plan.together import together_lines, together_problems

    at_once = min(models_max, len(served))
    plans = [(s.id, s.planned.plan) for s in served]
    problems = together_problems(plans, at_once)
    if problems:
        raise DoesNotFitError(
            f"{at_once} of these models loaded at once do not fit: " + "; ".join(problems),
            hint="--models-max 1 loads one at a time (each planned for the whole machine), or serve fewer models",
        )
    if at_once > 1:
        print(f"Checked: any {at_once} of these models fit together ({'; '.join(together_lines(plans, at_once))})")


def routing(args: argparse.Namespace, opts: ServerOptions, run_dir: Path, *, dry: bool,
            log_dir: Path | None = None) -> Routing:  # fmt: skip
    """Plan every model, check they fit as asked, and render the preset and the router's command."""
    from launcher.llama import preset as presets
    from launcher.llama.capabilities import run_text

    machine = resolve_machine(args)
    served = plan_models(args, opts, machine, dry=dry)
    check_together(served, args.models_max)
    logs = log_dir or run_dir
    sections = [presets.section_of(s.id, s.argv, log_file=str(logs / f"{s.id}.log")) for s in served]
    bin_dir = Path(served[0].argv[0]).parent
    binary = bin_dir / "llama-server"
    options = presets.parse_options(run_text([str(binary), "--help"])) if binary.is_file() else {}
    bad = presets.unknown_keys(sections, options) if options else []
    if bad:
        hint = "runq build (the pinned llama.cpp), or --llama-bin a newer build"
        raise RunqError(f"{binary} does not know these options, so its router would refuse the preset: "
                        + ", ".join(bad), hint=hint)  # fmt: skip
    comment = (f"Generated by runq for {len(served)} model(s) on this machine; each section is the command "
               f"`runq run MODEL --server` runs.\nRe-plan with the same `runq serve` (or `runq service install "
               f"--all`) command; edits here are overwritten.")  # fmt: skip
    text = presets.render_ini(sections, comment=comment)
    argv = presets.router_argv(str(binary), str(run_dir / "presets.ini"), models_max=args.models_max,
                               host=opts.host, port=opts.port, api_key_file=opts.api_key_file)  # fmt: skip
    return Routing(served, args.models_max, bin_dir, text, argv, options)


def cmd_serve(args: argparse.Namespace) -> int:
    from launcher.llama.argv import shell_quote
    from launcher.paths import logs_dir

    if args.models_max < 1:
        raise UsageError(f"--models-max {args.models_max}: must be 1 or more", hint="1: one model loaded at a time")
    opts = server_options(args)
    key = read_api_key(opts)
    run_dir = logs_dir() / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    r = routing(args, opts, run_dir, dry=args.dry_run)
    for s in r.models:
        plan = s.planned.plan
        print(f"{s.id}: {s.planned.target.name} {s.planned.quant}, {plan.ctx:,} tokens of context, "
              f"{plan.predicted_tg_tps:.1f} tokens/s predicted (alone on this machine)")  # fmt: skip
    if args.dry_run:
        print(f"[dry-run] would write {run_dir / 'presets.ini'}:")
        sys.stdout.write(r.preset_text)
        print(f"[dry-run] would run: {shell_quote(r.argv)}")
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
    from launcher.llama.preset import differences
    from launcher.llama.router import served_args

    got = served_args(router.models())
    ours = {s.id: s for s in r.models}
    if set(got) != set(ours):
        raise ServerFailed(f"the router lists {sorted(got)}, runq planned {sorted(ours)}",
                           hint=f"see {router.server.log_path}")  # fmt: skip
    for model_id, argv in got.items():
        diff = differences(ours[model_id].argv[1:], argv[1:], r.options)
        if diff:
            hint = "this is a bug in runq's preset; `runq run MODEL --server` runs it as planned"
            raise ServerFailed(f"the router would run {model_id} otherwise than planned: " + "; ".join(diff), hint=hint)


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
