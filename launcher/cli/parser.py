"""runq's argument parser: every command and flag, and each command's function, imported only when it runs.

This module stays light (argparse and the error types only) so that `runq --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from launcher import __version__
from launcher.errors import EXIT_USAGE


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int | list[str]]:
    """A command function imported when it runs, not when the parser is built. Its result is an exit code, or
    (`runq tui`) the command line to run next, which main() runs: it must come through as it is."""

    def run(args: argparse.Namespace) -> int | list[str]:
        result = getattr(importlib.import_module(module), name)(args)
        return result if isinstance(result, list) else int(result)

    return run


def tokens(text: str) -> int:
    """A number of tokens: 32768, or with a k/K suffix for 1,024 (32k = 32,768), as model cards write it."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = 1024 if t[-1:] in ("k", "K") else 1
    digits = t[:-1] if scale > 1 else t
    if not digits.removeprefix("-").isdigit():  # a negative count is the range check's to refuse
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens: e.g. 32768, or 32k for 32,768")
    return int(digits) * scale


class Parser(argparse.ArgumentParser):
    """argparse with runq's error format: `Error: …` and `Hint: …`, exit 2 (bad usage)."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}", file=sys.stderr)
        print(f"Hint: see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """A value that starts like a negative number (`--budget -1m`, `--gpu -5GiB`) is the option's value, so
        its own check can say what is wrong with it, instead of argparse's "expected one argument"."""
        if args is not None:
            args = _negative_values(list(args), self._option_string_actions)
        return super().parse_known_args(args, namespace)


def _negative_values(argv: list[str], options: dict[str, argparse.Action]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        action = options.get(a)
        if action is not None and action.nargs != 0 and a.startswith("--") and i + 1 < len(argv):
            value = argv[i + 1]
            if len(value) > 1 and value[0] == "-" and (value[1].isdigit() or value[1] == "."):
                out.append(f"{a}={value}")
                i += 2
                continue
        out.append(a)
        i += 1
    return out


EPILOG = """\
quick start: runq demo                      (a tiny model, end to end, no download)
             runq deepseek-v3.1 --auto      (plan, download, build, chat; --server for an API)

exit codes: 0 ok, 1 runtime error, 2 bad usage or config, 3 does not fit,
            4 an external tool failed, 130 interrupted
machine flags (plan for hardware you describe instead of this machine):
  --gpu 24GiB (repeat, or 2x80GiB; 'none' for no GPU)  --ram 256GiB  --cores 16
  --machine FILE.json  (sizes accept GiB/MiB/TiB (binary) and GB/MB/TB (decimal))
other hosts (llama.cpp RPC; start `runq worker` on each):
  --rpc HOST:PORT[,HOST:PORT…] (asked for their devices)  --worker ram=256GiB[,gpu=24GiB][,net=10Gbit]
"""


NO_CALIBRATE_HELP = "do not calibrate this machine first (about a minute, once): plan with the reference constants"


def _add_machine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("machine (describe instead of probing)")
    g.add_argument("--gpu", action="append", metavar="SIZE", help="a GPU's memory, e.g. 24GiB or 2x80GiB; 'none'")
    g.add_argument("--ram", metavar="SIZE", help="system RAM available to the model, e.g. 256GiB")
    g.add_argument("--cores", type=int, metavar="N", help="physical CPU cores")
    g.add_argument("--machine", metavar="FILE", help="a JSON description of the machine")
    g.add_argument(
        "--rpc", action="append", metavar="HOST:PORT[,…]",
        help="other hosts running `runq worker`: their devices take expert layers this host cannot hold",
    )  # fmt: skip
    g.add_argument(
        "--worker", action="append", metavar="ram=SIZE[,gpu=SIZE][,net=SPEED][,at=HOST:PORT]",
        help="describe another host (repeatable), e.g. ram=256GiB,net=10Gbit",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="runq",
        description="Run the largest mixture-of-experts LLM this machine can hold, fast, with llama.cpp.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"runq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_hw, _add_inspect, _add_plan, _add_build, _add_pull, _add_models, _add_tui):
        add(sub)
    add_run_parsers(sub, _add_machine_flags, _add_plan_flags)
    from launcher.cli.parser_serve import add_serve_parsers
    from launcher.cli.parser_service import add_service_parser, add_worker_parser

    add_service_parser(sub, _add_machine_flags, _add_plan_flags, _lazy)
    add_worker_parser(sub, _lazy)
    add_tune_parsers(sub)

    add_serve_parsers(sub, _add_machine_flags, _lazy, NO_CALIBRATE_HELP)
    return parser


def _add_hw(sub: Any) -> None:
    hw = sub.add_parser("hw", help="show this machine (or a described one): GPUs, RAM, CPU, disk")
    hw.add_argument("--json", action="store_true", help="print JSON")
    _add_machine_flags(hw)
    hw.set_defaults(func=_lazy("launcher.cli.info", "cmd_hw"))


def _add_inspect(sub: Any) -> None:
    ins = sub.add_parser("inspect", help="read a GGUF file's header: architecture, tensors, bytes by role")
    ins.add_argument("path", help="a .gguf file (for a split set, shard 1: …-00001-of-0000N.gguf)")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.add_argument("--tensors", action="store_true", help="also list every tensor")
    ins.set_defaults(func=_lazy("launcher.cli.info", "cmd_inspect"))


def _add_plan(sub: Any) -> None:
    pl = sub.add_parser(
        "plan",
        help="choose the quant and place every tensor for this machine (or a described one); nothing is run",
        description="Plan a model: which quant fits, which tensors go on which GPU and which stay in RAM, "
        "how fast it should run, and the exact llama.cpp command.",
    )
    pl.add_argument("model", help="a model name (e.g. deepseek-v3.1) or the path of a .gguf file (shard 1 of a set)")
    _add_plan_flags(pl)
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.add_argument("--llama-bin", metavar="DIR", help="ask the llama.cpp in DIR for its sizes (default: runq's build)")
    pl.add_argument(
        "--no-projection", action="store_true", help="do not ask llama.cpp for its sizes: runq's estimates only"
    )
    _add_machine_flags(pl)
    pl.set_defaults(func=_lazy("launcher.cli.plan", "cmd_plan"))


def _add_build(sub: Any) -> None:
    b = sub.add_parser(
        "build",
        help="build llama.cpp for this machine (CUDA when there is a GPU and nvcc, CPU otherwise), cached",
        description="Build the llama.cpp binaries runq runs (llama-server, llama-cli, llama-bench, llama-fit-params, "
        "llama-gguf-split) at the pinned, tested commit, and cache them: a second build is instant.",
    )
    b.add_argument("--backend", help="cpu or cuda (default: cuda when an NVIDIA GPU and nvcc are present)")
    b.add_argument("--cuda-arch", action="append", default=[], metavar="SM", help="compute capability, e.g. 86")
    b.add_argument(
        "--source", default="git", metavar="git|pypi|DIR",
        help="git: clone llama.cpp (default); pypi: the copy vendored in llama-cpp-python (no GitHub needed); "
        "DIR: a local checkout",
    )  # fmt: skip
    b.add_argument("--ref", help="git commit, tag or branch to build instead of the pinned commit (git source)")
    b.add_argument("--git-url", help="clone from this URL instead of GitHub (a mirror)")
    b.add_argument("--jobs", "-j", type=int, metavar="N", help="parallel compile jobs (default: CPU cores)")
    b.add_argument("--portable", action="store_true", help="no -march=native: binaries that run on other CPUs")
    b.add_argument("--list", action="store_true", help="list cached builds")
    b.add_argument("--clean", nargs="?", const="", metavar="KEY", help="remove the cached build KEY (exactly)")
    b.add_argument("--all", action="store_true", help="with --clean: remove every cached build")
    b.add_argument("--llama-bin", metavar="DIR", help="check a llama.cpp you built yourself: print what it supports")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=_lazy("launcher.cli.build", "cmd_build"))


def _add_pull(sub: Any) -> None:
    pu = sub.add_parser(
        "pull",
        help="download one quant of a model (the largest that fits, or --quant), resumable",
        description="Download exactly one quant's files into the Hugging Face cache (shared with other tools) or "
        "--dir. Checks free disk space first, resumes interrupted downloads, verifies the shard set at the end.",
    )
    pu.add_argument("model", help="a model name, e.g. deepseek-v3.1")
    pu.add_argument("--quant", help="the quant to download (default: the largest that fits this machine)")
    pu.add_argument("--dir", metavar="DIR", help="download into DIR instead of the Hugging Face cache")
    pu.add_argument("--ctx", type=tokens, metavar="N", help="context to plan for when choosing the quant")
    pu.add_argument("--disk-free", metavar="SIZE", help="plan for this much free disk instead of measuring it")
    _add_machine_flags(pu)
    pu.set_defaults(func=_lazy("launcher.cli.plan", "cmd_pull"))


def _add_models(sub: Any) -> None:
    mo = sub.add_parser("models", help="the models runq knows; --local: what is downloaded, and complete or not")
    mo.add_argument("--local", action="store_true", help="list GGUF quants on disk (Hugging Face cache, or --dir)")
    mo.add_argument("--dir", metavar="DIR", help="also look in this download directory")
    mo.add_argument("--json", action="store_true", help="print JSON")
    _add_machine_flags(mo)
    mo.set_defaults(func=_lazy("launcher.cli.info", "cmd_models"))


def _add_tui(sub: Any) -> None:
    tui = sub.add_parser("tui", help="pick a model in a terminal UI (also: `runq` alone, in a terminal)")
    tui.add_argument("--port", type=int, metavar="PORT", help="the port `s` (server) and `i` (service) use")
    _add_machine_flags(tui)
    tui.set_defaults(func=_lazy("launcher.cli.info", "cmd_tui"))


def add_tune_parsers(sub: Any) -> None:
    c = sub.add_parser(
        "calibrate",
        help="measure this machine's decode speed constants with llama-bench (a minute), used by every plan",
        description="Decode four generated models with llama-bench at 1..physical-core threads (and two on each GPU) "
        "and fit the effective RAM bandwidth and per-layer cost that speed predictions use. Runs once by itself "
        "before the first real run or tune on a machine (--no-calibrate skips it), and again on an idle machine "
        "after one taken under load; run it again after changing hardware or drivers.",
    )
    c.add_argument("--llama-bin", metavar="DIR", help="use the llama.cpp binaries in DIR instead of runq's build")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_lazy("launcher.cli.measure", "cmd_calibrate"))

    t = sub.add_parser(
        "tune",
        help="measure runq's plan, its neighbours and llama.cpp's own default with llama-bench; keep the fastest",
        description="Benchmark candidate plans of a downloaded model on this machine (expert layers per GPU, "
        "ubatch, threads, flash attention, load mode) against llama.cpp's default, choose the best for the goal "
        "(never slower than llama.cpp's default as measured) and save it for `runq run` and `runq service`.",
    )
    t.add_argument("model", help="a model name (its quant must be downloaded) or a .gguf file")
    t.add_argument("--quant", help="the quant to tune (default: the one runq would run)")
    t.add_argument(
        "--for",
        dest="goal",
        choices=("decode", "prefill", "balanced"),
        default="balanced",
        help="what to optimise: decode tokens/s, prompt tokens/s, or one 512+128-token turn (default)",
    )
    t.add_argument("--budget", default="10m", metavar="TIME", help="the most the whole run may take (90s, 10m, 1h)")
    t.add_argument("--ctx", type=tokens, metavar="N", help="context the plan is made for (default: the model's)")
    t.add_argument("--pp", type=int, default=512, metavar="N", help="prompt tokens per test (default 512)")
    t.add_argument("--tg", type=int, default=128, metavar="N", help="generated tokens per test (default 128)")
    t.add_argument("--repetitions", "-r", type=int, default=2, metavar="N", help="runs per test (default 2)")
    t.add_argument(
        "--depth",
        default="auto",
        metavar="N",
        help="tokens of context filled before each timed turn (llama-bench -d); default auto: the plan's context "
        "less the turn, as much of it as a quarter of each candidate's share of the budget fills; 0: an empty cache",
    )
    t.add_argument(
        "--gpu-limit",
        metavar="SIZE",
        help="use at most SIZE of each GPU, llama.cpp's default included "
        "(e.g. 8GiB: room for something else, or tuning as on a smaller card; the result is not saved)",
    )
    t.add_argument("--llama-bin", metavar="DIR", help="use the llama.cpp binaries in DIR instead of runq's build")
    t.add_argument("--no-calibrate", action="store_true", help=NO_CALIBRATE_HELP)
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=_lazy("launcher.cli.measure", "cmd_tune"))


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to pin (everything else is planned)")
    g.add_argument("--quant", help="use this quant instead of the largest that fits")
    g.add_argument("--ctx", type=tokens, metavar="N", help="context in tokens: 32768, or 32k (default: the model's)")
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
    g.add_argument("--parallel", "-np", type=int, metavar="N", help="server slots: requests served at once "
                   "(default 1; N share the context's KV cache)")  # fmt: skip
    g.add_argument(
        "--estimate", action="store_true", help="do not read GGUF headers from the Hub: plan from published sizes"
    )


def add_run_parsers(sub: Any, add_machine_flags: Any, add_plan_flags: Any) -> None:
    r = sub.add_parser(
        "run",
        help="plan and start llama-cli (chat) or llama-server (--server) for a model name or a .gguf file",
        description="Plan, then start llama.cpp with the plan. A model name needs --auto to download and build "
        "what is missing (asking once; --yes skips the question). Flags after `--` go to llama.cpp; those that "
        "pin the plan (-c, -ngl, -ot, -ub, -ctk, -ctv, -t) are planned around, those runq sets itself (--host, "
        "--port, --api-key, -m, -b, --fit, -lm, …) are refused with the runq flag to use.",
    )
    r.add_argument("model", help="a model name (deepseek-v3.1) or a .gguf file (shard 1 of a set)")
    r.add_argument("--auto", action="store_true", help="download the chosen quant and build llama.cpp if missing")
    r.add_argument("--yes", "-y", action="store_true", help="do not ask before downloading or building")
    r.add_argument("--dry-run", action="store_true", help="print every step and the exact command; do nothing")
    r.add_argument("--server", action="store_true", help="start llama-server instead of an interactive chat")
    r.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    r.add_argument("--port", type=int, default=8080)
    r.add_argument("--api-key", help="require this key from clients (prefer --api-key-file)")
    r.add_argument("--api-key-file", metavar="FILE", help="file holding the key clients must send")
    r.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    r.add_argument("--timeout", type=float, default=900, metavar="S", help="seconds to wait for the model to load")
    r.add_argument("--llama-bin", metavar="DIR", help="use the llama.cpp binaries in DIR instead of runq's build")
    r.add_argument("--source", default="auto", help="where a missing build comes from: auto, git, pypi")
    r.add_argument("--verify-tensors", action="store_true", help="check every overridden tensor in llama.cpp's log")
    r.add_argument("--no-calibrate", action="store_true", help=NO_CALIBRATE_HELP)
    add_plan_flags(r)
    add_machine_flags(r)
    r.set_defaults(func=_lazy("launcher.cli.run", "cmd_run"))

    d = sub.add_parser(
        "demo",
        help="see runq work end to end in a minute, no download: a tiny random model, planned, served, verified",
    )
    d.add_argument("--port", type=int, default=0, help="port for the demo server (default: any free one)")
    d.add_argument("--source", default="auto", help="where a missing build comes from: auto, git, pypi")
    d.add_argument("--timeout", type=float, default=120, metavar="S")
    d.set_defaults(func=_lazy("launcher.cli.demo", "cmd_demo"))
