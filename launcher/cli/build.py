"""`runq build`: build llama.cpp for this machine, list and clean cached builds, check a build of your own.

CLI layer (prints, exit codes).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from launcher.cli.common import print_json
from launcher.errors import EXIT_OK, UsageError


def cmd_build(args: argparse.Namespace) -> int:
    if args.llama_bin:
        return _report_binaries(args)
    if args.list:
        return _list_builds(args)
    if args.clean is not None or args.all:
        return _clean_builds(args)
    from launcher.cli.common import StepBar, say
    from launcher.llama import build as bld

    req = bld.BuildRequest(source=args.source, backend=args.backend, cuda_archs=tuple(args.cuda_arch), ref=args.ref,
                           git_url=args.git_url, jobs=args.jobs, portable=args.portable)  # fmt: skip
    bar = StepBar()
    try:
        built, cached = bld.ensure_build(req, bar, say)
    finally:
        bar.done()
    return _report_build(args, built, cached=cached)


def _report_binaries(args: argparse.Namespace) -> int:
    from launcher.llama.capabilities import probe_binaries

    caps = probe_binaries(Path(args.llama_bin))
    if args.json:
        print_json(caps.to_json())
        return EXIT_OK
    print(f"{args.llama_bin}: llama.cpp {caps.version or '?'} (build {caps.build_number}, commit {caps.commit})")
    for name, ok in caps.flags.items():
        print(f"  {'yes' if ok else 'no ':<4} {name}")
    return EXIT_OK


def _list_builds(args: argparse.Namespace) -> int:
    from launcher.llama import build as bld

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
    from launcher.llama import build as bld

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
