"""What every CLI command shares: flags turned into typed values once, the machine, the model, progress printers,
and the two steps that may ask before they act (a download, a build).

CLI layer: it prints and asks. Each command module (cli_commands, cli_run, cli_service) imports this one and
the core; none imports another command module, and no core module imports this one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import RunqError, UsageError

if TYPE_CHECKING:
    from launcher.machine.spec import Machine
    from launcher.pipeline.plan import Ask, Planned
    from launcher.pipeline.target import ModelTarget
    from launcher.plan.inputs import PlanInputs, ServerOptions


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def warn(text: str) -> None:
    print(f"Warning: {text}", file=sys.stderr)


# --- flags -> typed values ----------------------------------------------------------------------------


def resolve_machine(args: argparse.Namespace, *, cpu_details: bool = False) -> Machine:
    """The probed machine, a --machine file, and the --gpu/--ram/--cores overrides, in that order."""
    from launcher.machine import spec as mach
    from launcher.units import parse_size

    gpus = None
    if args.gpu:
        per_flag = [mach.parse_gpu_flag(text) for text in args.gpu]
        if len(per_flag) > 1 and any(not sizes for sizes in per_flag):
            raise UsageError(f"--gpu {' --gpu '.join(args.gpu)}: 'none' cannot be combined with GPU sizes",
                             hint="give --gpu none alone for a machine without GPUs")  # fmt: skip
        gpus = [size for sizes in per_flag for size in sizes]
    ram = parse_size(args.ram, what="--ram") if args.ram else None
    if ram is not None and ram <= 0:  # as --gpu 0GiB: a description that cannot be, not a model too big
        raise UsageError(f"--ram {args.ram!r}: RAM must be more than zero", hint="e.g. --ram 64GiB")
    if args.machine:
        try:
            text = Path(args.machine).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or "not UTF-8 text"
            raise UsageError(f"cannot read the machine file {args.machine}: {why}") from None
        base = mach.machine_from_json(text, args.machine)
    else:
        from launcher.machine.probe import probe
        from launcher.paths import hf_cache_dir

        base = probe(disk_path=hf_cache_dir(), cpu_details=cpu_details)
    machine = mach.override(base, gpus=gpus, ram=ram, cores=args.cores)
    if getattr(args, "rpc", None) or getattr(args, "worker", None):
        from launcher.llama.rpc import attach

        machine = attach(machine, args)  # other hosts: described (--worker) or asked (--rpc)
    return machine


def plan_inputs(args: argparse.Namespace, *, server: bool) -> PlanInputs:
    """The planning flags every planning command has (plan, run, pull, service), as typed values."""
    from launcher.plan.inputs import PlanInputs

    return PlanInputs(
        ctx=args.ctx,
        cache_type_k=getattr(args, "cache_type_k", "f16"),
        cache_type_v=getattr(args, "cache_type_v", "f16"),
        ubatch=getattr(args, "ubatch", None),
        ngl=getattr(args, "ngl", None),
        ot=tuple(getattr(args, "ot", ())),
        threads=getattr(args, "threads", None),
        server=server,
        parallel=getattr(args, "parallel", None),
    )


def server_options(args: argparse.Namespace, *, timeout: float = 900) -> ServerOptions:
    """--host/--port/--api-key[-file]/--insecure/--timeout, checked (the off-loopback rule included)."""
    from launcher.plan.inputs import ServerOptions

    key_file = str(Path(args.api_key_file).resolve()) if getattr(args, "api_key_file", None) else None
    return ServerOptions(
        host=args.host,
        port=args.port,
        timeout_s=getattr(args, "timeout", timeout),
        api_key=getattr(args, "api_key", None),
        api_key_file=key_file,
        insecure=args.insecure,
    ).check()


def read_api_key(opts: ServerOptions) -> str | None:
    """The key clients must send: --api-key, or the first line of --api-key-file, which others must not read."""
    if not opts.api_key_file:
        return opts.api_key
    path = Path(opts.api_key_file)
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise UsageError(
            f"cannot read --api-key-file {path}: {why}",
            hint="give a file holding the key on its first line, readable only by you (chmod 600)",
        ) from None
    if mode & 0o077:
        raise UsageError(f"--api-key-file {path} can be read by other users (mode {mode & 0o777:o})",
                         hint=f"chmod 600 {path}")  # fmt: skip
    if not key:
        raise UsageError(f"--api-key-file {path} is empty", hint="write the key clients must send into it")
    return key


def show_profile_notes() -> None:
    """Broken user profiles (left out) and user profiles replacing runq's: each command that reads profiles
    says this once, before its own output."""
    from launcher.catalog.profiles import profile_notes

    for note in profile_notes():
        warn(note)


def ask_for(args: argparse.Namespace, *, server: bool) -> tuple[Ask, list[str]]:
    """The command's flags as the pipeline's Ask (llama.cpp flags after `--` that pin the plan win; the rest is
    passed through), and the flags to pass through."""
    import os

    from launcher.pipeline.plan import Ask
    from launcher.plan.inputs import advisories, split_extra

    pins, passthrough = split_extra(getattr(args, "extra", []))
    inputs = plan_inputs(args, server=server).pinned(pins)
    for text in advisories(inputs, getattr(args, "cores", None) or os.cpu_count() or 1):  # described, or here
        warn(text)
    ask = Ask(
        model=args.model, inputs=inputs, quant=getattr(args, "quant", None), pins=pins,
        estimate=getattr(args, "estimate", False), project=not getattr(args, "no_projection", False),
        llama_bin=getattr(args, "llama_bin", None),
    )  # fmt: skip
    return ask, passthrough


def plan_for(
    args: argparse.Namespace,
    *,
    server: bool,
    calibrate: bool = False,
    machine: Machine | None = None,
    tuned: bool = True,
) -> tuple[Planned, list[str]]:
    """The one pipeline for this command's flags, with the notes and the Hub's warnings printed."""
    from dataclasses import replace

    from launcher.pipeline.plan import plan

    show_profile_notes()
    ask, passthrough = ask_for(args, server=server)
    ask = replace(ask, tuned=tuned)
    planned = plan(ask, machine or resolve_machine(args), calibrate=calibrate, say=say)
    for w in planned.target.warnings:
        warn(w)
    if planned.chat_template.warning and planned.chat_template.note:  # before anything is launched
        warn(planned.chat_template.note)
    return planned, passthrough


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — cannot ask without a terminal", hint="add --yes to go ahead")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# --- progress ---------------------------------------------------------------------------------------


class ByteBar:
    """Download progress: a bar with speed and time left on a terminal, a line per 10% in logs."""

    def __init__(self) -> None:
        from launcher.progress import Meter

        self.meter = Meter()
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = -1

    def file(self, i: int, n: int, path: str, size: int) -> None:
        from launcher.units import fmt_bytes

        self.meter.restart()
        self.shown = -1
        print(f"[{i}/{n}] {path} ({fmt_bytes(size)})", flush=True)

    def __call__(self, done: int, total: int) -> None:
        r = self.meter.update(done, total)
        if self.tty:
            now = time.monotonic()
            if now - self.last < 0.2 and done < total:
                return
            self.last = now
            sys.stderr.write(f"\r  [{'#' * (r.pct * 30 // 100):<30}] {r.pct:3d}% {r.text()} ")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif r.pct // 10 > self.shown:
            self.shown = r.pct // 10
            print(f"  {r.pct}% of {r.text()}", file=sys.stderr, flush=True)


class StepBar:
    """Build progress by step (configure, compile): a bar on a terminal, a line per 10% in logs."""

    def __init__(self) -> None:
        self.step = ""
        self.shown = -1
        self.tty = sys.stderr.isatty()

    def __call__(self, pct: int, step: str) -> None:
        if step != self.step:
            if self.tty and self.step:
                sys.stderr.write("\n")
            self.step, self.shown = step, -1
        if self.tty:
            sys.stderr.write(f"\r  {step:<9} [{'#' * (pct * 30 // 100):<30}] {pct:3d}%")
            sys.stderr.flush()
        elif pct // 10 > self.shown:
            self.shown = pct // 10
            print(f"  {step}: {pct}%", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and self.step:
            sys.stderr.write("\n")


def say(text: str) -> None:
    print(text, file=sys.stderr)


# --- steps that may ask first ------------------------------------------------------------------------


def ensure_binaries(
    llama_bin: str | None, source: str, *, allowed: bool, dry: bool, quirks: tuple[str, ...] = ()
) -> Path:
    """llama.cpp binaries for this machine's real hardware (a described GPU does not make a CUDA build useful),
    with what the model's build quirks need (MiniMax on CUDA: -DGGML_CUDA_FORCE_CUBLAS=ON): the build here, or
    one built now."""
    from launcher.llama import build as bld
    from launcher.llama import build_config as bc
    from launcher.llama.binaries import backend_here, binaries_here
    from launcher.llama.build_config import quirk_flags

    found = binaries_here(llama_bin, quirks)
    if found is not None:
        return found.bin_dir
    wanted = backend_here()
    also = " ".join(quirk_flags(wanted, quirks))
    from launcher.llama.build_time import build_elsewhere, build_time_text

    if old := build_elsewhere(bc.LLAMA_CPP_COMMIT, wanted):
        say(f"Note: {old} has a {wanted} build of llama.cpp, but runq's cache is elsewhere now (RUNQ_HOME or "
            f"RUNQ_CACHE_DIR moved it): set RUNQ_CACHE_DIR={old} to use that build")  # fmt: skip
    if dry:
        say(f"[dry-run] would build llama.cpp ({wanted}{', with ' + also + ' for this model' if also else ''}): "
            f"runq build --source {source} — {build_time_text(wanted)}")  # fmt: skip
        return Path("<runq build>")
    if not allowed:
        if also:
            raise RunqError(
                f"no {wanted} build of llama.cpp with {also} yet (this model needs it)",
                hint="add --auto to build it now",
            )
        raise RunqError(
            f"no {wanted} build of llama.cpp yet",
            hint=f"run `runq build` first, or add --auto to build it now ({build_time_text(wanted)})",
        )
    bar = StepBar()
    try:
        built, _ = bld.ensure_build(bld.BuildRequest(source=source, quirks=quirks), bar, say)
    finally:
        bar.done()
    return built.bin_dir


def rpc_server_binary(llama_bin: str | None, source: str, *, yes: bool) -> tuple[Path, str | None]:
    """ggml-rpc-server (`runq worker`) of the build here (built now if there is none, asking once), or of
    --llama-bin; and the build's backend when known."""
    from launcher.errors import ExternalToolError
    from launcher.llama import build_config as bc
    from launcher.llama.binaries import backend_here, binaries_at, binaries_here
    from launcher.llama.build_time import build_time_text

    found = binaries_here(llama_bin)
    if found is None:
        wanted = backend_here()
        if not confirm(f"No {wanted} build of llama.cpp yet: build it now ({build_time_text(wanted)})?", yes):
            raise RunqError("a worker needs a llama.cpp build", hint="run `runq build`, or add --yes")
        found = binaries_at(ensure_binaries(None, source, allowed=True, dry=False))
    server = found.bin_dir / bc.RPC_SERVER
    if not server.is_file():
        raise ExternalToolError(
            f"{server}: not found (llama.cpp built without -DGGML_RPC=ON?)",
            hint="build it with `runq build`, or give --llama-bin a build with ggml-rpc-server",
        )
    return server, found.backend


def pull_with_progress(st: Any, disk_free: int | None = None) -> Any:
    """pull.pull with the CLI's printers; Ctrl-C says that nothing downloaded is lost."""
    from launcher.hub.pull import pull

    bar = ByteBar()
    try:
        done = pull(st, disk_free=disk_free, on_file=lambda i, n, f: bar.file(i, n, f.path, f.size), on_bytes=bar,
                    notice=lambda text: print(text, file=sys.stderr, flush=True))  # fmt: skip
    except KeyboardInterrupt:
        print("\nInterrupted: run the same command again to continue; nothing downloaded is lost.", file=sys.stderr)
        raise
    print(f"Ready: {done.first} ({done.files} file(s), {done.tensors} tensors verified)", flush=True)
    return done


def ensure_model(target: ModelTarget, quant: str, *, auto: bool, yes: bool, dry: bool) -> Path:
    """The chosen quant on disk: already there, or downloaded now (with --auto, asking once)."""
    from launcher import errors
    from launcher.hub import pull
    from launcher.paths import hf_cache_dir
    from launcher.units import fmt_decimal

    if target.model_path is not None:
        return target.model_path
    profile = target.profile
    assert profile is not None
    try:
        st = pull.state(profile, quant)
    except errors.Offline as e:
        if dry:
            say(f"[dry-run] would download {profile.repo} {quant} (the repo cannot be listed now: {e.message})")
            return hf_cache_dir() / "<after download>" / profile.quant(quant).path
        raise RunqError(
            f"{quant} is not on this machine and {profile.repo} cannot be reached: {e.message}",
            hint="connect to the network (or unset HF_HUB_OFFLINE), or run a local file: runq run PATH.gguf",
        ) from None
    if not st.complete:
        step = f"download {profile.repo} {quant}: {fmt_decimal(st.plan.missing_bytes)} of " \
               f"{fmt_decimal(st.quant.size_bytes)}"  # fmt: skip
        if dry:
            say(f"[dry-run] would {step}")
            return hf_cache_dir() / "<after download>" / st.quant.first.path
        if not auto:
            raise RunqError(f"{quant} is not downloaded",
                            hint=f"run `runq pull {profile.name} --quant {quant}`, or add --auto")  # fmt: skip
        if not confirm(f"Download {profile.repo} {quant} ({fmt_decimal(st.plan.missing_bytes)})?", yes):
            raise RunqError("nothing downloaded: stopped at your answer")
        return Path(pull_with_progress(st).first)
    local = pull.local_first(st)
    if local is None:
        raise RunqError(f"{st.quant.first.path} is not in the Hugging Face cache after the download")
    return local
