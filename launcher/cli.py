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
    g.add_argument("--gpu", action="append", metavar="SIZE", help="a GPU's memory, e.g. 24GiB or 2x80GiB; 'none'")
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

    pl = sub.add_parser(
        "plan",
        help="choose the quant and place every tensor for this machine (or a described one); nothing is run",
        description="Plan a model: which quant fits, which tensors go on which GPU and which stay in RAM, "
        "how fast it should run, and the exact llama.cpp command.",
    )
    pl.add_argument("model", help="a model name (e.g. deepseek-v3.1) or the path of a .gguf file (shard 1 of a set)")
    _add_plan_flags(pl)
    pl.add_argument("--json", action="store_true", help="print JSON")
    _add_machine_flags(pl)
    pl.set_defaults(func=cmd_plan)
    return parser


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to pin (everything else is planned)")
    g.add_argument("--quant", help="use this quant instead of the largest that fits")
    g.add_argument("--ctx", type=int, metavar="N", help="context length in tokens (default: the model's profile)")
    g.add_argument(
        "--cache-type-k", "-ctk", default="f16", metavar="TYPE", help="KV cache type for K (f16, q8_0, q4_0…)"
    )
    g.add_argument("--cache-type-v", "-ctv", default="f16", metavar="TYPE", help="KV cache type for V")
    g.add_argument(
        "--ubatch", "-ub", type=int, metavar="N", help="physical batch size (default: 512, or 2048 when it pays)"
    )
    g.add_argument("--ngl", type=int, metavar="N", help="layers on the GPU (llama.cpp -ngl)")
    g.add_argument(
        "--ot",
        action="append",
        default=[],
        metavar="PATTERN=BUF",
        help="your own -ot override, kept first (repeatable)",
    )
    g.add_argument("--threads", "-t", type=int, metavar="N", help="CPU threads (default: physical cores)")
    g.add_argument("--cli", action="store_true", help="plan for llama-cli (chat) instead of llama-server")


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
    from launcher import catalog, render_plan
    from launcher.argv import Launch, build_argv
    from launcher.choose import ModelSource, choose, profile_sources
    from launcher.errors import DoesNotFitError
    from launcher.memory import KV_TYPE_BYTES
    from launcher.model import open_local
    from launcher.planner import Request

    for flag, value in (("--cache-type-k", args.cache_type_k), ("--cache-type-v", args.cache_type_v)):
        if value not in KV_TYPE_BYTES:
            raise UsageError(f"{flag} {value!r} is not a KV cache type", hint="one of: " + ", ".join(KV_TYPE_BYTES))
    if args.ctx is not None and args.ctx < 256:
        raise UsageError(f"--ctx {args.ctx}: too small to chat with", hint="use 2048 or more")
    machine = resolve_machine(args)
    profile = None
    if _looks_like_path(args.model):
        model = open_local(args.model)
        found = catalog.profile_for_file(args.model)
        profile = found[0] if found else None
        name = Path(args.model).name
        sources = [ModelSource(name, model.tensors, model.hparams, exact=True, size_bytes=model.file_bytes)]
        model_name = profile.display_name if profile else (model.hparams.name or name)
        default_ctx = min(profile.default_ctx if profile else 16384, model.hparams.n_ctx_train or 16384)
        pinned = None
        if args.quant:
            raise UsageError(
                "--quant applies to a model name, not to a file", hint="give a model name, or another file"
            )
        model_path = str(Path(args.model).resolve())
    else:
        profile = catalog.require_profile(args.model)
        sources = profile_sources(profile)
        model_name = profile.display_name
        default_ctx = profile.default_ctx
        pinned = profile.quant(args.quant).name if args.quant else None
        model_path = ""
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
        model_path = _expected_model_path(profile.repo, profile.quant(chosen.source.name).path)
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
        _print_json(render_plan.choice_json(choice, argv))
    else:
        print(render_plan.choice_text(choice, machine, argv))
    return EXIT_OK


def _expected_model_path(repo: str, path: str) -> str:
    """Where the file is in the Hugging Face cache, or will be once downloaded."""
    from launcher.paths import hf_cache_dir

    root = hf_cache_dir() / ("models--" + repo.replace("/", "--")) / "snapshots"
    for snap in sorted(root.glob("*")) if root.is_dir() else []:
        if (snap / path).is_file():
            return str(snap / path)
    return str(root / "REVISION" / path)


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
