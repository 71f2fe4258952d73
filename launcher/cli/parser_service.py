"""The parsers of `runq service` (systemd units for models, routers and workers) and `runq worker`.

Light, like parser.py (argparse only): each command's function is imported when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Lazy = Callable[[str, str], Any]


def add_worker_parser(sub: Any, lazy: Lazy) -> None:
    w = sub.add_parser(
        "worker",
        help="lend this host's GPUs or CPU and RAM to a main host (llama.cpp RPC; the main host adds --rpc)",
        description="Start llama.cpp's ggml-rpc-server for this host's GPUs (and its CPU and RAM), print the "
        "address and what it lends; Ctrl-C or SIGTERM stops it. The protocol has no authentication: it listens "
        "on 127.0.0.1 unless --host says otherwise.",
    )
    worker_flags(w)
    w.add_argument("--yes", "-y", action="store_true", help="build llama.cpp without asking if there is no build")
    w.add_argument("--source", default="auto", help="where a missing build comes from: auto, git, pypi")
    w.set_defaults(func=lazy("launcher.cli.worker", "cmd_worker"))


def worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=50052)
    p.add_argument("--cache", action="store_true", help="cache tensors on this host's disk (faster reloads)")
    p.add_argument("--device", action="append", metavar="DEV[,DEV…]", help="lend only these (CUDA0, CPU…)")
    p.add_argument("--threads", "-t", type=int, metavar="N", help="CPU threads for the CPU device")
    p.add_argument("--llama-bin", metavar="DIR", help="use the llama.cpp binaries in DIR instead of runq's build")


def add_service_parser(sub: Any, add_machine_flags: Any, add_plan_flags: Any, lazy: Lazy) -> None:
    s = sub.add_parser("service", help="run a model as a systemd service (starts at boot, waits for the GPU)")
    ss = s.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    def target_flags(p: argparse.ArgumentParser, optional: bool = False) -> None:
        p.add_argument("model", nargs="?" if optional else None, help="a model name or a .gguf file")
        p.add_argument("--name", help="service name (default: from the model); the unit is runq-NAME.service")
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
        p.add_argument("--port", type=int, default=8080)
        p.add_argument("--api-key-file", metavar="FILE", help="key clients must send (mode 0600); needed off-loopback")
        p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
        p.add_argument("--llama-bin", metavar="DIR", help="use the llama.cpp binaries in DIR")
        p.add_argument("--source", default="auto", help="where a missing build comes from: auto, git, pypi")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--user", dest="mode", action="store_const", const="user", help="a user unit (default)")
        mode.add_argument("--system", dest="mode", action="store_const", const="system", help="a system unit (root)")
        p.add_argument("--run-as", metavar="USER", help="system units: the user the server runs as (never root)")
        p.set_defaults(mode="user")
        add_plan_flags(p)
        add_machine_flags(p)

    i = ss.add_parser("install", help="plan, download/build what is missing, write and start the unit, verify it")
    target_flags(i, optional=True)
    i.add_argument("--all", action="store_true", help="one router for every model on disk (`runq serve` as a unit)")
    i.add_argument("--models-max", type=int, default=1, metavar="N", help="with --all: models loaded at once")
    i.add_argument("--dry-run", action="store_true", help="print the unit and the plan; write nothing")
    i.add_argument("--force", action="store_true", help="replace a different unit runq wrote before")
    i.add_argument("--yes", "-y", action="store_true", help="do not ask before downloading or building")
    i.set_defaults(func=lazy("launcher.cli.service", "cmd_install"))

    _add_install_worker(ss, lazy)

    r = ss.add_parser("render", help="print exactly the unit file, nothing else")
    target_flags(r)
    r.set_defaults(func=lazy("launcher.cli.service", "cmd_render"))

    for action, helptext in (
        ("status", "unit state, health, the plan it runs, memory per device as llama.cpp reported it"),
        ("restart", "restart the service (waits until it is verified again)"),
        ("remove", "stop, disable and delete the unit and its saved plan (never the model or the build)"),
        ("logs", "the service's journal"),
    ):
        p = ss.add_parser(action, help=helptext)
        p.add_argument("name")
        _mode_flags(p)
        if action == "logs":
            p.add_argument("-f", "--follow", action="store_true")
        p.set_defaults(func=lazy("launcher.cli.service", f"cmd_{action}"))
    ls = ss.add_parser("list", help="runq's services and their state")
    _mode_flags(ls)
    ls.set_defaults(func=lazy("launcher.cli.service", "cmd_list"))

    w = ss.add_parser("wait-gpu")  # the unit's ExecStartPre
    w.add_argument("--gpu-free", action="append", default=[], metavar="INDEX:BYTES")
    w.add_argument("--timeout", type=float, default=120)
    w.set_defaults(func=lazy("launcher.cli.service", "cmd_wait_gpu"))
    v = ss.add_parser("verify")  # the unit's ExecStartPost
    v.add_argument("name")
    _mode_flags(v)
    v.add_argument("--timeout", type=float, default=1800)
    v.set_defaults(func=lazy("launcher.cli.service", "cmd_verify"))
    # argparse lists a subcommand even with help=SUPPRESS ("==SUPPRESS=="): take the unit's own helpers off the list.
    ss._choices_actions = [a for a in ss._choices_actions if a.dest not in ("wait-gpu", "wait-workers", "verify")]


def _add_install_worker(ss: Any, lazy: Lazy) -> None:
    ww = ss.add_parser("wait-workers")  # ExecStartPre of a plan with --rpc
    ww.add_argument("--need", action="append", default=[], metavar="HOST:PORT/INDEX:BYTES")
    ww.add_argument("--llama-bin", metavar="DIR", required=True)
    ww.add_argument("--timeout", type=float, default=120)
    ww.set_defaults(func=lazy("launcher.cli.worker", "cmd_wait_workers"))
    iw = ss.add_parser("install-worker", help="run `runq worker` as a systemd service (starts at boot)")
    worker_flags(iw)
    iw.add_argument("--name", help="service name (default: worker-PORT); the unit is runq-NAME.service")
    iw.add_argument("--source", default="auto", help="where a missing build comes from: auto, git, pypi")
    wmode = iw.add_mutually_exclusive_group()
    wmode.add_argument("--user", dest="mode", action="store_const", const="user", help="a user unit (default)")
    wmode.add_argument("--system", dest="mode", action="store_const", const="system", help="a system unit (root)")
    iw.add_argument("--run-as", metavar="USER", help="system units: the user the worker runs as (never root)")
    iw.set_defaults(mode="user")
    iw.add_argument("--dry-run", action="store_true", help="print the unit; write nothing")
    iw.add_argument("--force", action="store_true", help="replace a different unit runq wrote before")
    iw.add_argument("--yes", "-y", action="store_true", help="do not ask before building or installing")
    iw.set_defaults(func=lazy("launcher.cli.service", "cmd_install_worker"))


def _mode_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--user", dest="mode", action="store_const", const="user")
    g.add_argument("--system", dest="mode", action="store_const", const="system")
    p.set_defaults(mode="user")
