"""The parsers of `runq serve` (one router for many models) and `runq clients` (their configuration for tools).

Light, like parser.py (argparse only): each command's function is imported when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_serve_parsers(sub: Any, add_machine_flags: Callable[[argparse.ArgumentParser], None],
                      lazy: Callable[[str, str], Any], no_calibrate_help: str) -> None:  # fmt: skip
    s = sub.add_parser(
        "serve",
        help="one OpenAI-compatible address for every model on disk (or those named), each loaded on demand",
        description="Start one llama-server router for every complete model on disk (or the models named), each "
        "with its own runq plan for this machine: the same command `runq run MODEL --server` runs. A model "
        "loads on its first request; with --models-max 1 (the default) the one loaded before is unloaded first.",
    )
    s.add_argument("models", nargs="*", metavar="MODEL", help="model names or .gguf files (default: all on disk)")
    s.add_argument("--models-max", type=int, default=1, metavar="N",
                   help="models loaded at once (default 1; more only when their plans fit together)")  # fmt: skip
    s.add_argument("--dry-run", action="store_true", help="print the plans, the preset file and the command")
    s.add_argument("--auto", action="store_true", help="download named models and build llama.cpp if missing")
    s.add_argument("--yes", "-y", action="store_true", help="do not ask before downloading or building")
    server_flags(s)
    s.add_argument("--timeout", type=float, default=120, metavar="S", help="seconds to wait for the router")
    s.add_argument("--llama-bin", metavar="DIR", help="use the llama.cpp binaries in DIR instead of runq's build")
    s.add_argument("--source", default="auto", help="where a missing build comes from: auto, git, pypi")
    s.add_argument("--no-calibrate", action="store_true", help=no_calibrate_help)
    model_flags(s)
    add_machine_flags(s)
    s.set_defaults(func=lazy("launcher.cli.serve", "cmd_serve"))

    c = sub.add_parser(
        "clients",
        help="write aider's and Open WebUI's configuration for a running runq server or router",
        description="Ask a running server or router which models it serves, with their context and sampling, "
        "and write ready configuration: aider's model settings, model metadata and aider.conf.yml, and an "
        "environment file for Open WebUI. Prints the environment OpenAI clients read.",
    )
    c.add_argument("--url", default="http://127.0.0.1:8080", help="the server (default http://127.0.0.1:8080)")
    c.add_argument("--api-key-file", metavar="FILE", help="the key the server wants (mode 0600)")
    c.add_argument("--dir", metavar="DIR", help="where to write the files (default: runq's config dir, clients/)")
    c.set_defaults(func=lazy("launcher.cli.clients", "cmd_clients"))


def server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", help="require this key from clients (prefer --api-key-file)")
    p.add_argument("--api-key-file", metavar="FILE", help="file holding the key clients must send (mode 0600)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")


def model_flags(p: argparse.ArgumentParser) -> None:
    """The plan pins that make sense for every model alike."""
    g = p.add_argument_group("what to pin for every model (everything else is planned per model)")
    g.add_argument("--ctx", type=int, metavar="N", help="context length in tokens (default: each model's)")
    g.add_argument("--cache-type-k", "-ctk", default="f16", metavar="TYPE", help="KV cache type for K")
    g.add_argument("--cache-type-v", "-ctv", default="f16", metavar="TYPE", help="KV cache type for V")
    g.add_argument("--ubatch", "-ub", type=int, metavar="N", help="physical batch size")
    g.add_argument("--threads", "-t", type=int, metavar="N", help="CPU threads (default: planned per model)")
