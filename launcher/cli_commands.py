"""The commands hw, inspect, plan, pull, models and build: call the core, render, return an exit code.

Part of the CLI layer (the only layer that prints). Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from launcher.cli_common import print_json, resolve_machine
from launcher.errors import EXIT_OK, UsageError


def cmd_hw(args: argparse.Namespace) -> int:
    from launcher import render

    m = resolve_machine(args, cpu_details=True)
    if args.json:
        print_json(render.machine_json(m))
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
        print_json(data)
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


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher import render_plan, sampling
    from launcher.argv import build_argv, launch_for
    from launcher.choose import choose
    from launcher.cli_common import llama_sizes, plan_inputs, resolve_target
    from launcher.errors import DoesNotFitError
    from launcher.inputs import buffers_of, planning_request
    from launcher.measured import measured_note, with_speed
    from launcher.target import expected_model_path

    inputs = plan_inputs(args, server=not args.cli)
    machine = with_speed(resolve_machine(args))  # this machine's measured constants, when calibrated
    target = resolve_target(args)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    try:
        choice = choose(target.name, machine, list(target.sources), req, pinned=target.pinned,
                        ctx_pinned=args.ctx is not None)  # fmt: skip
    except DoesNotFitError as e:
        _explain_no_fit(args, e, target.name, machine)
        raise
    try:
        choice, projected = llama_sizes(args, target, machine, req, choice)
    except DoesNotFitError as e:
        _explain_no_fit(args, e, target.name, machine)
        raise
    sizes = f"{target.sizes}; KV cache and compute: {projected}"
    chosen = choice.chosen
    model_path = str(target.model_path) if target.model_path else ""
    if target.profile and not model_path:
        repo_path = target.first_paths.get(chosen.source.name) or target.profile.quant(chosen.source.name).path
        model_path = expected_model_path(target.profile.repo, repo_path)
    from launcher.inputs import ServerOptions

    launch = launch_for("llama-cli" if args.cli else "llama-server", model_path, target.profile,
                        server=None if args.cli else ServerOptions(), gguf_sampling=chosen.source.sampling)  # fmt: skip
    argv = build_argv(chosen.plan, launch)
    values = sampling.effective(target.profile.sampling if target.profile else None, chosen.source.sampling)
    measured = measured_note(machine, target, chosen.source.name)  # the last `runq tune` here, if any
    if args.json:
        print_json({**render_plan.choice_json(choice, argv, values), "sizes": sizes,
                    "notes": list(machine.notes), "measured": measured})  # fmt: skip
    else:
        print(render_plan.choice_text(choice, machine, argv, sizes, values))
        if measured:
            print(f"Measured: {measured}")
    return EXIT_OK


def _explain_no_fit(args: argparse.Namespace, e: Any, model_name: str, machine: Any) -> None:
    from launcher import render_plan

    cands = e.detail or []
    if args.json:
        print_json({"model": model_name, "fits": False, "error": e.message, "hint": e.hint,
                    "candidates": [render_plan.candidate_json(c) for c in cands]})  # fmt: skip
    elif cands:
        print(f"{model_name} on {render_plan.machine_line(machine)}:")
        print("\n".join(render_plan.candidates_table(cands, None)))


def cmd_pull(args: argparse.Namespace) -> int:
    from launcher import hub, pull
    from launcher.cli_common import pull_with_progress, show_profile_notes
    from launcher.inputs import check_ctx
    from launcher.target import check_model_name, pin_quant, require_profile
    from launcher.units import fmt_bytes, fmt_decimal, parse_size

    check_model_name(args.model)
    check_ctx(args.ctx)
    disk_free = parse_size(args.disk_free, what="--disk-free") if args.disk_free else None
    show_profile_notes()
    profile = require_profile(args.model)
    try:
        listing, remote = pull.list_quants(profile)
    except hub.Offline as e:
        raise hub.HubError(f"cannot download {profile.repo}: {e.message}",
                           hint="connect to the network and retry") from None  # fmt: skip
    name = pin_quant(profile, args.quant, list(remote)) if args.quant else _largest_that_fits(args, profile)
    dest = Path(args.dir).resolve() if args.dir else None
    st = pull.state(profile, name, dest, listing)
    rq = st.quant
    print(
        f"{profile.repo} {name}: {len(rq.files)} file(s), {fmt_decimal(rq.size_bytes)} ({fmt_bytes(rq.size_bytes)}); "
        f"{len(st.plan.complete)} already here, {fmt_decimal(st.plan.missing_bytes)} to download into {st.where}"
    )
    if st.plan.partial_bytes:
        print(f"Continuing interrupted downloads: the {fmt_decimal(st.plan.partial_bytes)} already here are kept.")
    pull_with_progress(st, disk_free)
    return EXIT_OK


def _largest_that_fits(args: argparse.Namespace, profile: Any) -> str:
    from launcher.choose import choose
    from launcher.cli_common import plan_inputs
    from launcher.inputs import buffers_of, planning_request
    from launcher.target import resolve

    inputs = plan_inputs(args, server=True)
    machine = resolve_machine(args)
    target = resolve(profile.name)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    choice = choose(target.name, machine, list(target.sources), req)
    name = choice.chosen.source.name
    print(f"{name}: the largest quant that fits this machine ({choice.chosen.plan.predicted_tg_tps:.1f} tokens/s "
          f"predicted; `runq plan {profile.name}` explains)")  # fmt: skip
    return name


def cmd_models(args: argparse.Namespace) -> int:
    from launcher.cli_common import show_profile_notes
    from launcher.units import fmt_bytes

    if args.dir and not Path(args.dir).is_dir():
        raise UsageError(f"--dir {args.dir}: no such directory", hint="give the directory `runq pull --dir` used")
    if args.dir and not args.local:
        raise UsageError(
            "--dir lists downloaded files: use it with --local", hint=f"runq models --local --dir {args.dir}"
        )
    show_profile_notes()
    if not args.local:
        from launcher import model_list
        from launcher.render_plan import machine_line

        machine = resolve_machine(args)
        rows = model_list.catalog_rows(machine)
        if args.json:
            print_json([model_list.row_json(r) for r in rows])
        else:
            print(model_list.rows_text(rows, machine_line(machine)))
        return EXIT_OK
    from launcher.local_models import scan_dir, scan_hf_cache

    quants, partial = scan_hf_cache()
    if args.dir:
        more_q, more_p = scan_dir(Path(args.dir))
        quants += more_q
        partial += more_p
    if args.json:
        print_json(
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


def cmd_build(args: argparse.Namespace) -> int:
    if args.llama_bin:
        return _report_binaries(args)
    if args.list:
        return _list_builds(args)
    if args.clean is not None or args.all:
        return _clean_builds(args)
    from launcher import build as bld
    from launcher.cli_common import StepBar, say

    req = bld.BuildRequest(source=args.source, backend=args.backend, cuda_archs=tuple(args.cuda_arch), ref=args.ref,
                           git_url=args.git_url, jobs=args.jobs, portable=args.portable)  # fmt: skip
    bar = StepBar()
    try:
        built, cached = bld.ensure_build(req, bar, say)
    finally:
        bar.done()
    return _report_build(args, built, cached=cached)


def _report_binaries(args: argparse.Namespace) -> int:
    from launcher.capabilities import probe_binaries

    caps = probe_binaries(Path(args.llama_bin))
    if args.json:
        print_json(caps.to_json())
        return EXIT_OK
    print(f"{args.llama_bin}: llama.cpp {caps.version or '?'} (build {caps.build_number}, commit {caps.commit})")
    for name, ok in caps.flags.items():
        print(f"  {'yes' if ok else 'no ':<4} {name}")
    return EXIT_OK


def _list_builds(args: argparse.Namespace) -> int:
    from launcher import build as bld

    builds = bld.cached_builds()
    if args.json:
        print_json([{"key": b.key, "path": str(b.path), **b.manifest} for b in builds])
    elif not builds:
        print(f"No cached builds in {bld.builds_dir()}.")
    for b in builds if not args.json else []:
        m = b.manifest
        archs = f" sm_{','.join(m['cuda_archs'])}" if m.get("cuda_archs") else ""
        print(f"{b.key}  {m['backend']}{archs}  commit {m['commit'][:10]}  {m['seconds']:.0f} s  {m['built_at']}")
        print(f"    {b.bin_dir}")
    return EXIT_OK


def _clean_builds(args: argparse.Namespace) -> int:
    from launcher import build as bld

    if args.all and args.clean:
        raise UsageError("--clean KEY and --all: one or the other", hint="--clean KEY removes one build, "
                         "--clean --all removes every cached build")  # fmt: skip
    if not args.all and not args.clean:
        raise UsageError(
            "--clean needs the key of a build, or --all",
            hint="see `runq build --list` for the keys; `runq build --clean --all` removes every build",
        )
    removed = bld.clean(None if args.all else args.clean)
    print(f"Removed {len(removed)} build(s)" + (": " + ", ".join(removed) if removed else "."))
    return EXIT_OK


def _report_build(args: argparse.Namespace, b: Any, *, cached: bool) -> int:
    if args.json:
        print_json({"key": b.key, "cached": cached, "bin_dir": str(b.bin_dir), **b.manifest})
        return EXIT_OK
    m = b.manifest
    if cached:
        print(f"Already built: {b.key} (llama.cpp {m['commit'][:10]}, {m['backend']}); nothing to do.")
    else:
        print(f"Built {b.key} in {m['seconds']:.0f} s (llama.cpp {m['commit'][:10]}, {m['backend']}).")
    print(f"  binaries: {b.bin_dir}")
    return EXIT_OK


def cmd_tui(args: argparse.Namespace) -> int | list[str]:
    """The picker; what it hands over (a `runq run …` or `runq service install …`) the CLI runs next."""
    from launcher.tui.app import machine_flags, run_tui

    argv = run_tui(resolve_machine(args), machine_flags(args))
    if argv:
        print(f"$ runq {' '.join(argv)}", file=sys.stderr)
        return argv
    return EXIT_OK
