"""`runq run` / `runq MODEL --auto` / `runq demo`: from nothing to a running, verified chat or server.

Part of the CLI layer (it prints and decides exit codes); every decision is made
by the core (planner, choose, argv) and every side effect by the edges (hub,
build, runner). `--dry-run` prints each step and the exact command instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher.errors import EXIT_OK, RunqError, UsageError

# llama.cpp flags after `--` that pin part of the plan: (flags, Request field); the rest is passed through.
_PIN_FLAGS = {
    ("-c", "--ctx-size"): "ctx",
    ("-ngl", "--gpu-layers", "--n-gpu-layers"): "ngl",
    ("-ub", "--ubatch-size"): "ubatch",
    ("-ctk", "--cache-type-k"): "cache_type_k",
    ("-ctv", "--cache-type-v"): "cache_type_v",
    ("-t", "--threads"): "threads",
    ("-ot", "--override-tensor"): "ot",
}
DEMO_SPEC = {"arch": "deepseek2", "n_layer": 6, "n_embd": 256, "n_ff": 512, "n_ff_exp": 256, "n_expert": 16}


# --- pins from llama.cpp flags --------------------------------------------------------------------------


def split_extra(extra: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pins the plan must respect, and the flags to pass through unchanged."""
    pins: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(extra):
        flag = extra[i]
        field_name = next((f for names, f in _PIN_FLAGS.items() if flag in names), None)
        if field_name is None:
            rest.append(flag)
            i += 1
            continue
        if i + 1 >= len(extra):
            raise UsageError(f"{flag} after -- needs a value")
        value = extra[i + 1]
        if field_name == "ot":
            pins.setdefault("ot", []).append(value)
        elif field_name in ("cache_type_k", "cache_type_v"):
            pins[field_name] = value
        else:
            if field_name == "ngl" and value in ("all", "auto"):
                raise UsageError(f"-ngl {value}: give a number so runq can plan around it")
            try:
                pins[field_name] = int(value)
            except ValueError:
                raise UsageError(f"{flag} {value!r}: expected a number") from None
        i += 2
    return pins, rest


# --- resolving what to run ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # what to call the model in messages
    sources: list[Any]  # choose.ModelSource
    profile: Any | None
    model_path: Path | None  # a local file, when there is one
    pinned: str | None
    default_ctx: int
    sizes: str
    first_paths: dict[str, str]


def resolve_target(args: argparse.Namespace) -> Target:
    from launcher import catalog, hub
    from launcher.choose import ModelSource, profile_sources
    from launcher.cli_commands import _looks_like_path, _pin_quant
    from launcher.model import open_local

    if _looks_like_path(args.model):
        if getattr(args, "quant", None):
            raise UsageError(
                "--quant applies to a model name, not to a file", hint="give a model name, or another file"
            )
        model = open_local(args.model)
        found = catalog.profile_for_file(args.model)
        profile = found[0] if found else None
        name = Path(args.model).name
        src = ModelSource(name, model.tensors, model.hparams, exact=True, size_bytes=model.file_bytes)
        ctx = min(profile.default_ctx if profile else 16384, model.hparams.n_ctx_train or 16384)
        return Target(
            profile.display_name if profile else (model.hparams.name or name), [src], profile,
            Path(args.model).resolve(), None, ctx, "exact: from the file's GGUF header", {},
        )  # fmt: skip
    profile = catalog.require_profile(args.model)
    if getattr(args, "estimate", False):
        remote = hub.ExactSources({}, "estimated: --estimate", (), None, {})
    else:
        remote = hub.exact_sources(profile)
    for w in remote.warnings:
        print(f"Warning: {w}", file=sys.stderr)
    sources = profile_sources(profile, remote.sources, remote.available)
    pinned = _pin_quant(profile, args.quant, [s.name for s in sources]) if args.quant else None
    return Target(
        profile.display_name, sources, profile, None, pinned, profile.default_ctx, remote.status, remote.first_paths
    )


def find_binaries(args: argparse.Namespace, backend_wanted: str) -> Path | None:
    """A cached build of the pinned commit for this machine (CUDA preferred when there is a GPU)."""
    from launcher import build as bld
    from launcher import build_config as bc

    if args.llama_bin:
        return Path(args.llama_bin)
    builds = [b for b in bld.cached_builds() if b.manifest.get("commit") == bc.LLAMA_CPP_COMMIT]
    for b in builds:
        if b.manifest.get("backend") == backend_wanted:
            return b.bin_dir
    return builds[0].bin_dir if builds and backend_wanted == "cpu" else None


def ensure_binaries(args: argparse.Namespace, *, allowed: bool, dry: bool) -> Path:
    """Binaries for this machine's real hardware (a described GPU does not make a CUDA build useful here)."""
    from launcher import build as bld
    from launcher.hardware import probe_gpus

    wanted = "cuda" if probe_gpus()[0] else "cpu"
    found = find_binaries(args, wanted)
    if found is not None:
        return found
    if dry:
        print(f"[dry-run] would build llama.cpp ({wanted}): runq build --source {args.source}", file=sys.stderr)
        return Path("<runq build>")
    if not allowed:
        raise RunqError(
            f"no {wanted} build of llama.cpp yet",
            hint="run `runq build` first, or add --auto to build it now (about 5 minutes on 2 cores)",
        )
    from launcher.cli_commands import _progress_printer

    show = _progress_printer()
    try:
        built = bld.build_for_this_machine(args.source, show, say=lambda text: print(text, file=sys.stderr))
    finally:
        show.done()
    return built.bin_dir


def binary_flags(bin_dir: Path) -> dict[str, bool] | None:
    """The flags these binaries accept: from runq's build manifest, or read from `--help` of your own build."""
    import json

    from launcher.capabilities import probe_binaries

    manifest = bin_dir.parent / "manifest.json"
    if manifest.is_file():
        try:
            return dict(json.loads(manifest.read_text())["capabilities"]["flags"])
        except (ValueError, KeyError, OSError):
            pass
    if not (bin_dir / "llama-server").is_file():
        return None  # not built yet (dry run): the pinned commit's flags
    return probe_binaries(bin_dir).flags


def here_has_gpu() -> bool:
    from launcher.hardware import probe_gpus

    return bool(probe_gpus()[0])


def api_key(args: argparse.Namespace) -> str | None:
    from launcher.runner import is_loopback

    key = args.api_key
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read --api-key-file {args.api_key_file}: {e.strerror}") from None
        if not key:
            raise UsageError(f"--api-key-file {args.api_key_file} is empty")
    if not is_loopback(args.host) and not key and not args.insecure:
        raise UsageError(
            f"--host {args.host} would let anyone on the network use the model",
            hint="give --api-key-file FILE (clients send the key), or --insecure if you really mean it",
        )
    return key


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — cannot ask without a terminal", hint="add --yes to go ahead")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# --- run ---------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from launcher import render_plan
    from launcher.argv import Launch, build_argv, shell_quote
    from launcher.choose import choose
    from launcher.cli_commands import resolve_machine

    pins, passthrough = split_extra(getattr(args, "extra", []))
    key = api_key(args) if args.server else None
    machine = resolve_machine(args)
    target = resolve_target(args)
    req = request_from(args, pins, target, server=args.server)
    choice = choose(target.name, machine, target.sources, req, pinned=target.pinned, ctx_pinned="ctx" in pins)
    chosen = choice.chosen
    dry = args.dry_run
    print(f"{target.name} {chosen.source.name}: {chosen.plan.ctx:,} tokens of context, "
          f"{chosen.plan.predicted_tg_tps:.1f} tokens/s predicted ({target.sizes})")  # fmt: skip
    for line in render_plan.memory_table(chosen.plan):
        print(line)
    for line in render_plan.placement_lines(chosen.plan):
        print(f"  {line}")

    model_path = target.model_path or ensure_model(args, target.profile, chosen.source.name, dry)

    binaries = ensure_binaries(args, allowed=args.auto or bool(args.llama_bin), dry=dry)
    if machine.source != "probed" and machine.gpus and not here_has_gpu():
        print("Note: the plan is for the GPU you described; this machine has none: llama.cpp runs it all on the CPU.",
              file=sys.stderr)  # fmt: skip
    binary = binaries / ("llama-server" if args.server else "llama-cli")
    template = target.profile.template_path() if target.profile else None
    extra = list(passthrough)
    if args.verify_tensors and "-lv" not in extra:
        extra += ["-lv", "5"]
    launch = Launch(
        binary=str(binary),
        model_path=str(model_path),
        sampling=target.profile.sampling if target.profile else None,
        template_path=str(template) if template else None,
        server=args.server,
        host=args.host,
        port=args.port,
        extra=tuple(extra),
        flags=binary_flags(binaries),
    )
    if args.server and key:
        launch = replace(
            launch,
            extra=(
                *launch.extra,
                *(["--api-key-file", args.api_key_file] if args.api_key_file else ["--api-key", key]),
            ),
        )
    argv = build_argv(chosen.plan, launch)
    if dry:
        shown = [a if a != key else "<api key>" for a in argv]
        print(f"[dry-run] would run: {shell_quote(shown)}")
        return EXIT_OK
    if not args.server:
        print(f"$ {shell_quote(argv)}", file=sys.stderr)
        import subprocess

        return subprocess.run(argv, check=False).returncode  # the terminal is llama-cli's now
    return serve(args, argv, chosen.plan, machine, key, choice, req, target, launch)


def request_from(args: argparse.Namespace, pins: dict[str, Any], target: Target, *, server: bool) -> Any:
    """The plan request from the command's flags and the llama.cpp flags after `--` (which win)."""
    from launcher.cli_commands import _user_overrides
    from launcher.planner import Request

    return Request(
        ctx=pins.get("ctx") or args.ctx or target.default_ctx,
        cache_type_k=pins.get("cache_type_k", args.cache_type_k),
        cache_type_v=pins.get("cache_type_v", args.cache_type_v),
        ubatch=pins.get("ubatch", args.ubatch),
        ngl=pins.get("ngl", args.ngl),
        user_overrides=_user_overrides([*args.ot, *pins.get("ot", [])]),
        server=server,
        threads=pins.get("threads", args.threads),
    )


def ensure_model(args: argparse.Namespace, profile: Any, quant: str, dry: bool) -> Path:
    """The chosen quant on disk: already there, or downloaded now (with --auto, asking once)."""
    from launcher import hub
    from launcher.cli import main as cli_main
    from launcher.hub_layout import quants_by_name
    from launcher.units import fmt_decimal

    try:
        listing = hub.list_repo(profile.repo)
    except hub.Offline as e:
        if dry:
            print(f"[dry-run] would download {profile.repo} {quant} (the repo cannot be listed now: {e.message})",
                  file=sys.stderr)  # fmt: skip
            return hub.hf_cache_dir() / "<after download>" / profile.quant(quant).path
        raise RunqError(
            f"{quant} is not on this machine and {profile.repo} cannot be reached: {e.message}",
            hint="connect to the network (or unset HF_HUB_OFFLINE), or run a local file: runq run PATH.gguf",
        ) from None
    rq = quants_by_name(profile, listing.files)[quant]
    pp = hub.plan_pull(listing, rq, None)
    if len(pp.complete) < len(rq.files):
        step = f"download {profile.repo} {rq.name}: {fmt_decimal(pp.missing_bytes)} of {fmt_decimal(rq.size_bytes)}"
        if dry:
            print(f"[dry-run] would {step}", file=sys.stderr)
            return hub.hf_cache_dir() / "<after download>" / rq.first.path
        if not args.auto:
            raise RunqError(
                f"{rq.name} is not downloaded", hint=f"run `runq pull {profile.name} --quant {rq.name}`, or add --auto"
            )
        if not confirm(
            f"Download {profile.repo} {rq.name} ({fmt_decimal(pp.missing_bytes)})?", getattr(args, "yes", False)
        ):
            raise RunqError("nothing downloaded: stopped at your answer")
        if cli_main(["pull", profile.name, "--quant", rq.name]) != 0:
            raise RunqError(f"the download of {rq.name} did not finish", hint="run the same command again to continue")
    local = hub.local_path(listing, rq.first, None)
    if local is None:
        raise RunqError(f"{rq.first.path} is not in the Hugging Face cache after the download")
    return local


def serve(args: argparse.Namespace, argv: list[str], plan: Any, machine: Any, key: str | None, choice: Any,
          req: Any, target: Any, launch: Any) -> int:  # fmt: skip
    """Start, wait, verify, then keep serving until Ctrl-C; re-plan with more margin after an out-of-memory."""
    from launcher import llama_log, runner
    from launcher.argv import build_argv
    from launcher.choose import choose
    from launcher.paths import cache_dir

    attempt = 0
    while True:
        log_path = cache_dir() / "logs" / f"llama-server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        print(f"Log: {log_path}", file=sys.stderr)
        server = runner.start(argv, log_path, args.host, args.port, key)
        try:
            took = runner.wait_healthy(server, args.timeout)
        except runner.ServerFailed as e:
            if e.kind == "oom" and attempt < 2:
                attempt += 1
                biggest = max(
                    (
                        choice.chosen.source.tensors.expert_bytes(il)
                        for il in choice.chosen.source.tensors.expert_layers
                    ),
                    default=0,
                )
                req = replace(req, margin_extra_bytes=req.margin_extra_bytes + biggest)
                choice = choose(target.name, machine, [choice.chosen.source], req)
                before = sum(len(v) for v in plan.expert_layers.values())
                plan = choice.chosen.plan
                after = sum(len(v) for v in plan.expert_layers.values())
                print(
                    f"Out of memory while loading: re-planning with {biggest / 2**30:.1f} GiB more margin per GPU "
                    f"({before - after} more expert layer(s) on the CPU), attempt {attempt + 1} of 3",
                    file=sys.stderr,
                )
                argv = build_argv(plan, launch)
                continue
            raise
        break
    try:
        report = llama_log.parse(server.log_text())
        expected = plan.moved if args.verify_tensors else None
        check = llama_log.verify(plan, report, has_gpu=bool(machine.gpus) and machine.source == "probed",
                                 expected_overrides=expected)  # fmt: skip
        print(f"llama-server is ready at {server.url} (loaded in {took:.1f} s); memory per device:")
        for line in check.lines:
            print(f"  {line}")
        if not check.ok:
            for p in check.problems:
                print(f"Error: {p}", file=sys.stderr)
            server.stop()
            return 1
        print("Serving. Ctrl-C stops it.", flush=True)
        code = server.proc.wait()
        raise runner.died(server, code)
    except KeyboardInterrupt:
        print("\nStopping llama-server…", file=sys.stderr)
        server.stop()
        return 130


# --- demo --------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from launcher import llama_log, memory, render_plan, runner
    from launcher.argv import Launch, build_argv
    from launcher.hardware import probe
    from launcher.machine import GPU
    from launcher.model import open_local
    from launcher.paths import cache_dir
    from launcher.planner import Request, plan
    from launcher.synth import SynthSpec, write_model

    print("runq demo: a tiny random-weight MoE model (deepseek2 architecture), generated here — its output is")
    print("gibberish by design. What is real: the plan, llama.cpp, the placement it reports, the server.\n")
    path = cache_dir() / "demo" / "runq-demo.gguf"
    if not path.is_file():
        write_model(SynthSpec(**DEMO_SPEC), path)  # type: ignore[arg-type]
    model = open_local(path)
    tensors, hp = model.tensors, model.hparams
    # A pretend GPU with room for the non-expert weights and about half of the expert layers.
    req = Request(ctx=4096, ubatch=512, server=True)
    kv = memory.kv_layout(hp).bytes_for(req.ctx)
    base = tensors.non_expert_bytes() + kv + memory.gpu_compute_bytes(hp, req.ctx, req.ubatch or 512)
    half = sum(tensors.expert_bytes(il) for il in tensors.expert_layers[: len(tensors.expert_layers) // 2])
    vram = memory.CUDA_CONTEXT_BYTES + memory.GPU_MARGIN_BYTES + base + half
    here = probe(cpu_details=False)
    pretend = replace_gpus(here, [GPU(0, "pretend GPU", vram, vram)])
    p = plan(pretend, tensors, hp, req)
    size = tensors.total_bytes / 2**20
    print(f"Plan against a pretend {vram / 2**20:.0f} MiB GPU ({len(tensors)} tensors, {size:.1f} MiB of weights):")
    for line in render_plan.placement_lines(p):
        print(f"  {line}")
    print(f"  -ot {' -ot '.join(str(o) for o in p.overrides)}\n")
    ns = argparse.Namespace(llama_bin=None, source=args.source)
    binaries = ensure_binaries(ns, allowed=True, dry=False)
    port = args.port or runner.free_port()
    argv = build_argv(
        p, Launch(binary=str(binaries / "llama-server"), model_path=str(path), port=port, extra=("-lv", "5"))
    )
    log_path = cache_dir() / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    print(f"Starting llama-server on port {port} (log: {log_path})…")
    server = runner.start(argv, log_path, "127.0.0.1", port)
    try:
        took = runner.wait_healthy(server, args.timeout)
        answer = server.request("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hello!"}],
                                                         "max_tokens": 24, "temperature": 0.8})  # fmt: skip
        reply = answer["choices"][0]["message"].get("content", "")
        speed = answer.get("timings", {}).get("predicted_per_second")
        print(f"Ready in {took:.1f} s. Asked 'Say hello!', the model answered (gibberish by design):\n  {reply!r}")
        if speed:
            print(f"  ({speed:.0f} tokens/s generated)")
        report = llama_log.parse(server.log_text())
        check = llama_log.verify(p, report, has_gpu=False, expected_overrides=p.moved)
        print("\nVerification against llama.cpp's own log:")
        for line in check.lines:
            print(f"  {line}")
        if not here.gpus:
            print("  (no GPU here: llama.cpp ran the pretend GPU's share on the CPU, so its CPU column holds both)")
        for prob in check.problems:
            print(f"Error: {prob}", file=sys.stderr)
        return EXIT_OK if check.ok else 1
    finally:
        server.stop()


def replace_gpus(machine: Any, gpus: list[Any]) -> Any:
    from dataclasses import replace as dc_replace

    return dc_replace(machine, gpus=tuple(gpus), gpu_note=None, source="mixed")
