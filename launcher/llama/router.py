"""A llama-server router (`--models-preset`): start it, ask it what it serves, stop it and every model it started.

Edge. The router starts each model as its own llama-server child, in the router's process group, without a
parent-death signal, on the first request for it. So: the router is runq's child in a session of its own (it dies
with runq, procs.py); stopping it sends SIGTERM once (it then unloads every model; a second SIGTERM would make it
exit at once, leaving them) and, whatever happened, SIGKILL to the whole group after it — a child still loading
when the router died would otherwise finish loading first, then exit. LLAMA_CACHE points at an empty directory:
the router would otherwise list every Hugging Face cache model too, with llama.cpp's default flags.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.llama import procs
from launcher.llama import server as single
from launcher.llama.server import Server

STOP_MARGIN_S = 15  # the router's own unload wait (stop-timeout) plus this, then SIGKILL to the group


@dataclass
class Router:
    server: Server  # the router process, its log, address and key
    stop_timeout_s: float

    @property
    def url(self) -> str:
        return self.server.url

    def models(self, timeout: float = 10) -> list[dict[str, Any]]:
        """GET /models: every model with its id, status ("loaded", "loading", "unloaded"…) and exact argv."""
        data = self.server.request("/models", timeout=timeout).get("data", [])
        return [m for m in data if isinstance(m, dict)]

    def unload(self, model: str) -> None:
        self.server.request("/models/unload", {"model": model}, timeout=30)

    def stop(self) -> int:
        """SIGTERM once (the router unloads its models), SIGKILL to the whole process group after
        stop-timeout + a margin, and to whatever is left of it anyway. The router's exit status."""
        proc = self.server.proc
        procs.forget_at_exit(self.stop)
        if proc.poll() is None:
            # A model still loading has nothing to save (and would not hear the router until loaded): no long wait.
            loading = "loading" in states(self, timeout=2).values()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(single.LOADING_GRACE_S if loading else self.stop_timeout_s + STOP_MARGIN_S)
        kill_group(proc.pid)
        return proc.wait()


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def start(argv: list[str], log_path: Path, host: str, port: int, api_key: str | None, *, empty_cache: Path,
          stop_timeout_s: float) -> Router:  # fmt: skip
    """Start the router (its own session, dying with runq); stopped at runq's exit whatever happens."""
    empty_cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LLAMA_CACHE": str(empty_cache)}
    server = single.start(argv, log_path, host, port, api_key, env=env)
    procs.forget_at_exit(server.stop)
    router = Router(server, stop_timeout_s)
    procs.stop_at_exit(router.stop)
    return router


def wait_healthy(router: Router, timeout: float) -> float:
    """Seconds until the router answers /health (it loads no model yet). Interrupted: stops it first."""
    try:
        took = single.wait_healthy(router.server, timeout)
    except BaseException:
        router.stop()
        raise
    return took


def states(router: Router, timeout: float = 5) -> dict[str, str]:
    """{model id: its status value}; {} when the router does not answer right now."""
    try:
        models = router.models(timeout=timeout)
        return {str(m.get("id")): str((m.get("status") or {}).get("value", "?")) for m in models}
    except (OSError, ValueError, urllib.error.URLError):
        return {}


def served_args(models: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{model id: the argv the router runs it with (binary first)}, from /models."""
    return {str(m.get("id")): [str(a) for a in (m.get("status") or {}).get("args", [])] for m in models}
