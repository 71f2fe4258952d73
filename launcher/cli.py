"""The `runq` command: parse arguments, call the core, render, exit.

The only module that prints for users and decides exit codes. Heavy modules
(pydantic, psutil, pynvml, huggingface_hub, textual) are imported inside the
command functions so `runq --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import __version__
from launcher.errors import EXIT_INTERRUPTED, EXIT_OK, RunqError, UsageError

if TYPE_CHECKING:
    from launcher.machine import Machine

EPILOG = """\
exit codes: 0 ok, 1 runtime error, 2 bad usage or config, 3 does not fit,
            4 an external tool failed, 130 interrupted
machine flags (plan for hardware you describe instead of this machine):
  --gpu 24GiB (repeat, or 2x80GiB; 'none' for no GPU)  --ram 256GiB  --cores 16
  --machine FILE.json  (sizes accept GiB/MiB/TiB (binary) and GB/MB/TB (decimal))
"""


def _add_machine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("machine (describe instead of probing)")
    g.add_argument(
        "--gpu", action="append", metavar="SIZE", help="a GPU's memory, e.g. 24GiB or 2x80GiB; 'none'"
    )
    g.add_argument("--ram", metavar="SIZE", help="system RAM available to the model, e.g. 256GiB")
    g.add_argument("--cores", type=int, metavar="N", help="physical CPU cores")
    g.add_argument("--machine", metavar="FILE", help="a JSON description of the machine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runq",
        description="Run the largest mixture-of-experts LLM this machine can hold, fast, with llama.cpp.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"runq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    hw = sub.add_parser("hw", help="show this machine (or a described one): GPUs, RAM, CPU, disk")
    hw.add_argument("--json", action="store_true", help="print JSON")
    _add_machine_flags(hw)
    hw.set_defaults(func=cmd_hw)

    ins = sub.add_parser("inspect", help="read a GGUF file's header: architecture, tensors, bytes by role")
    ins.add_argument("path", help="a .gguf file (for a split set, shard 1: …-00001-of-0000N.gguf)")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.add_argument("--tensors", action="store_true", help="also list every tensor")
    ins.set_defaults(func=cmd_inspect)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args))
    except RunqError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"Hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `runq inspect … | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
