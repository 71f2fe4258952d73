"""Start llama-server with a plan, wait until it answers, read what it did, stop it cleanly.

The edge that owns child processes. The child's output goes to a log file (its
path is printed); failures are read back from that log and named (port in use,
out of memory, a model llama.cpp cannot load). The argv comes from argv.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import llama_log
from launcher.errors import RunqError, ServerFailed, UsageError

HEALTH_POLL_S = 0.2


PR_SET_PDEATHSIG = 1
# GGML_ABORT attaches gdb and prints a backtrace: not what a user needs to read.
_BACKTRACE = re.compile(
    r"^\s*#\d+\s|^\[New LWP|^\[Thread |^\[Inferior|^Using host libthread|^\d+\t|^syscall \(\)"
    r"|No such file or directory\.$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: the child gets SIGTERM when runq dies, however it dies (SIGKILL, SIGTERM, a crash)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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


def start(argv: list[str], log_path: Path, host: str, port: int, api_key: str | None = None) -> Server:
    check_bind(host, port)
    binary = Path(argv[0])
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ServerFailed(f"{binary}: llama.cpp binary not found", hint="run `runq build` (or give --llama-bin DIR)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    # Its own process group: a Ctrl-C reaches runq, which then stops the server in order; and if runq dies
    # any other way, the kernel stops the server too (runq starts no threads before this point).
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509
    )
    log.close()
    return Server(proc, log_path, host, port, api_key)


def wait_healthy(server: Server, timeout: float) -> float:
    """Seconds until /health answers ok. Raises ServerFailed, naming the cause, if the process dies or stalls."""
    t0 = time.monotonic()
    while True:
        code = server.proc.poll()
        if code is not None:
            raise died(server, code)
        try:
            if server.request("/health", timeout=2).get("status") == "ok":
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
