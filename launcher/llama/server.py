"""Start llama-server with a plan, wait until it answers, read what it did, stop it cleanly.

The edge that owns child processes. The child's output goes to a log file (its
path is printed); failures are read back from that log and named (port in use,
out of memory, a model llama.cpp cannot load). The argv comes from argv.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import RunqError, ServerFailed, UsageError
from launcher.llama import log as llama_log
from launcher.llama import procs
from launcher.plan.inputs import check_port

HEALTH_POLL_S = 0.2
LOADING_GRACE_S = 3.0  # a server still loading has nothing to save: SIGKILL after this if SIGTERM is not enough


# GGML_ABORT attaches gdb and prints a backtrace: not what a user needs to read.
_BACKTRACE = re.compile(
    r"^\s*#\d+\s|^\[New LWP|^\[Thread |^\[Inferior|^Using host libthread|^\d+\t|^syscall \(\)"
    r"|No such file or directory\.$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_bind(host: str, port: int) -> None:
    """Fail before starting llama-server when it could not listen, saying why: a host that does not resolve or
    is not this machine's, a privileged port, or a port in use."""
    try:
        family, kind, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(
            f"--host {host}: cannot resolve it ({e.strerror})",
            hint="give an address (127.0.0.1 this machine only, 0.0.0.0 every address) or a known name",
        ) from None
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise _bind_error(host, port, e) from None


def _bind_error(host: str, port: int, e: OSError) -> RunqError:
    if e.errno == errno.EADDRINUSE:
        return ServerFailed(f"port {port} on {host} is already in use", hint="stop what uses it, or pick --port",
                            kind="port")  # fmt: skip
    if e.errno == errno.EADDRNOTAVAIL:
        return UsageError(
            f"--host {host} is not an address of this machine",
            hint="use one that `ip addr` lists, 127.0.0.1 (this machine only) or 0.0.0.0 (every address)",
        )
    if e.errno == errno.EACCES:
        return UsageError(f"port {port} is privileged: only root may listen on ports below 1024",
                          hint="pick --port 1024 or above, e.g. 8080")  # fmt: skip
    return ServerFailed(f"cannot listen on {host}:{port}: {e.strerror}", hint="pick another --host or --port")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log_path: Path
    host: str
    port: int
    api_key: str | None = None
    ready: bool = False  # /health answered ok

    @property
    def url(self) -> str:
        return base_url(self.host, self.port)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, path: str, body: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
        return http_json(self.url, path, self.api_key, body, timeout)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after `timeout` (a few seconds while it is still loading); the exit status."""
        procs.forget_at_exit(self.stop)
        return procs.stop_child(self.proc, timeout if self.ready else min(timeout, LOADING_GRACE_S))


def base_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def http_json(
    url: str, path: str, api_key: str | None = None, body: dict[str, Any] | None = None, timeout: float = 120
) -> dict[str, Any]:
    """One JSON request to a llama-server (GET without a body, POST with one)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # our own server, on a URL we built
        return json.loads(r.read() or b"{}")


def start(argv: list[str], log_path: Path, host: str, port: int, api_key: str | None = None, *,
          env: dict[str, str] | None = None) -> Server:  # fmt: skip
    """Start llama-server (in `env`, default runq's); it stops when runq stops, however runq stops (see procs)."""
    check_port(port)  # port 0 would bind a random port that runq could never find to poll (for every caller)
    check_bind(host, port)
    binary = Path(argv[0])
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ServerFailed(f"{binary}: llama.cpp binary not found", hint="run `runq build` (or give --llama-bin DIR)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    # Its own process group: a Ctrl-C reaches runq, which then stops the server in order. It dies with runq.
    proc = procs.spawn(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                       env=env)  # fmt: skip
    try:
        log.close()
        server = Server(proc, log_path, host, port, api_key)
        procs.stop_at_exit(server.stop)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM/SIGHUP) in the instant it started
        procs.stop_child(proc, LOADING_GRACE_S)
        raise
    return server


def wait_healthy(server: Server, timeout: float) -> float:
    """Seconds until /health answers ok. Raises ServerFailed, naming the cause, if the process dies or stalls.
    Interrupted (Ctrl-C, SIGTERM, SIGHUP) while the model loads, it stops the load first."""
    try:
        took = _poll_health(server, timeout)
    except KeyboardInterrupt:
        server.stop()
        raise
    server.ready = True
    return took


def _poll_health(server: Server, timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        code = server.proc.poll()
        if code is not None:
            raise died(server, code)
        try:
            if server.request("/health", timeout=1).get("status") == "ok":
                return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
            pass
        if time.monotonic() - t0 > timeout:
            server.stop()
            raise ServerFailed(
                f"llama-server did not become ready within {timeout:.0f} s",
                hint=f"a very large model may need more: --timeout SECONDS; the log is {server.log_path}",
            )
        time.sleep(HEALTH_POLL_S)


def died(server: Server, code: int) -> ServerFailed:
    text = server.log_text()
    kind = llama_log.failure(text)
    lines = [_ANSI.sub("", x) for x in text.strip().splitlines() if not _BACKTRACE.search(x)]
    tail_lines = lines[-6:]
    cause = next((x for x in lines if dict(llama_log.FAILURES)[kind].search(x)), None) if kind else None
    if cause and cause not in tail_lines:
        tail_lines = [cause, *tail_lines[-5:]]  # the line that says what happened, before the last ones
    tail = "\n  ".join(tail_lines)
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    what = {
        "port": f"port {server.port} is already in use",
        "oom": "it ran out of memory",
        "model": "llama.cpp could not load the model",
        "rpc": "it lost a worker (llama.cpp's RPC backend)",
    }.get(kind or "", "")
    message = f"llama-server {how}" + (f": {what}" if what else "") + (f"\n  {tail}" if tail else "")
    return ServerFailed(message, hint=f"the full log is {server.log_path}", kind=kind)
