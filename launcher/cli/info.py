"""`runq hw`, `runq inspect`, `runq models` and `runq tui`: what this machine, a file and the catalog hold.

CLI layer (prints, exit codes). Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launcher.cli.common import print_json, resolve_machine
from launcher.errors import EXIT_OK, UsageError


def cmd_hw(args: argparse.Namespace) -> int:
    from launcher.view import text as render

    m = resolve_machine(args, cpu_details=True)
    if args.json:
        print_json(render.machine_json(m))
    else:
        print(render.machine_text(m))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from launcher.model.shards import open_local
    from launcher.pipeline.target import check_file
    from launcher.units import fmt_bytes
    from launcher.view import text as render

    check_file(args.path)
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


def cmd_models(args: argparse.Namespace) -> int:
    from launcher.cli.common import show_profile_notes
    from launcher.units import fmt_bytes

    if args.dir and not Path(args.dir).is_dir():
        raise UsageError(f"--dir {args.dir}: no such directory", hint="give the directory `runq pull --dir` used")
    if args.dir and not args.local:
        raise UsageError(
            "--dir lists downloaded files: use it with --local", hint=f"runq models --local --dir {args.dir}"
        )
    show_profile_notes()
    if not args.local:
        from launcher.pipeline import rows as model_list
        from launcher.view.plan import machine_line

        machine = resolve_machine(args)
        rows = model_list.catalog_rows(machine)
        if args.json:
            print_json([model_list.row_json(r) for r in rows])
        else:
            print(model_list.rows_text(rows, machine_line(machine)))
        return EXIT_OK
    from launcher.hub.local import scan_dir, scan_hf_cache

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


def cmd_tui(args: argparse.Namespace) -> int | list[str]:
    """The picker; what it hands over (a `runq run …` or `runq service install …`) the CLI runs next."""
    machine = resolve_machine(args)  # a bad machine flag is said first
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Textual would write escape codes into a pipe or file and wait for keys that never come.
        raise UsageError(
            "`runq tui` needs a terminal: its input or output is not one",
            hint="run it in a terminal; for scripts: `runq models`, `runq plan MODEL`, `runq run MODEL --auto`",
        )
    from launcher.tui.app import machine_flags, run_tui

    argv = run_tui(machine, machine_flags(args), port=args.port)
    if argv:
        print(f"$ runq {' '.join(argv)}", file=sys.stderr)
        return argv
    return EXIT_OK
