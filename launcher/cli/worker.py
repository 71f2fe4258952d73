"""`runq worker`: lend this host's GPUs, or its CPU and RAM, to a main host over llama.cpp's RPC backend.

Edge: starts llama.cpp's ggml-rpc-server (building llama.cpp first if there is no build, asking once),
prints where it listens and each device it lends with its free memory, and stops it on Ctrl-C or SIGTERM.
The server also dies with runq (PR_SET_PDEATHSIG), so it never outlives it unless systemd owns runq.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from launcher.errors import EXIT_INTERRUPTED, EXIT_OK, ExternalToolError, RunqError
from launcher.llama.procs import stop_child

READY_TIMEOUT_S = 60.0
_DEVICE_LINE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)")


def cmd_worker(args: argparse.Namespace) -> int:
    from launcher.cli.common import rpc_server_binary
    from launcher.llama.rpc import default_devices, exposure_warning, worker_argv
    from launcher.llama.server import check_bind
    from launcher.machine.probe import probe_gpus
    from launcher.plan.inputs import check_port, is_loopback

    check_port(args.port)
    check_bind(args.host, args.port)
    server, backend = rpc_server_binary(args.llama_bin, args.source, yes=args.yes)
    devices = [d for text in args.device or [] for d in text.split(",") if d]
    if not devices:
        devices = default_devices(len(probe_gpus()[0]), backend)
    threads = args.threads or os.cpu_count() or 1
    argv = worker_argv(server, args.host, args.port, threads, args.cache, devices)
    if not is_loopback(args.host):
        print(exposure_warning(args.host, args.port), file=sys.stderr)
    return _serve(argv, args.host, args.port)


def _serve(argv: list[str], host: str, port: int) -> int:
    """Run ggml-rpc-server on a pseudo-terminal (it prints its device list with printf and flushes only per
    client: a pipe would hold it back), print what it lends, forward its lines, stop it when asked.

    Ctrl-C and SIGHUP stop it with exit 130; SIGTERM (how systemd stops a worker service) with exit 0."""
    from launcher.llama.procs import Terminated, spawn

    master, slave = os.openpty()
    try:
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
    except OSError as e:
        os.close(master)
        raise ExternalToolError(f"{argv[0]}: cannot run: {e.strerror}") from None
    finally:
        os.close(slave)
    clients = [0]  # connections accepted: one plan or run makes dozens, each printed by the server
    try:
        _announce(proc, master, host, port)
        print("Serving. Ctrl-C stops it.", flush=True)
        for line in _lines(proc, master, timeout=None):
            if (shown := _relayed(line, clients)) is not None:
                print(f"{time.strftime('%H:%M:%S')} {shown}", flush=True)
        raise RunqError(f"ggml-rpc-server exited with status {proc.wait()}")
    except KeyboardInterrupt as e:
        print(f"\nStopping the worker ({clients[0]} client connection(s) served)…", file=sys.stderr)
        stop_child(proc, grace=10)
        return EXIT_OK if isinstance(e, Terminated) and e.signum == signal.SIGTERM else EXIT_INTERRUPTED
    finally:
        stop_child(proc, grace=10)
        os.close(master)


_CONNECTION_RE = re.compile(r"^(Accepted client connection|Client connection closed)")


def _relayed(line: str, clients: list[int]) -> str | None:
    """The server's line as runq shows it: the first client connection says the worker is in use, the others
    are only counted (about 60 for one plan and one run); every other line is passed on."""
    m = _CONNECTION_RE.match(line)
    if m is None:
        return line
    if m.group(1).startswith("Accepted"):
        clients[0] += 1
        if clients[0] == 1:
            return "A client connected: the main host is using this worker (further connections are not shown)"
    return None


def _announce(proc: subprocess.Popen[bytes], master: int, host: str, port: int) -> None:
    """Wait until it listens; print the address and the devices with their free memory."""
    devices: list[str] = []
    seen: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT_S
    for line in _lines(proc, master, timeout=READY_TIMEOUT_S):
        seen.append(line)
        if m := _DEVICE_LINE.match(line):
            devices.append(f"  {m.group(1)}: {m.group(2)}, {int(m.group(4)) / 1024:.1f} GiB free of "
                           f"{int(m.group(3)) / 1024:.1f} GiB")  # fmt: skip
        if "transport" in line:
            break
    while not _bound(host, port) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not devices or not _bound(host, port):
        tail = "\n  ".join(seen[-8:])
        stop_child(proc, grace=10)
        raise ExternalToolError(f"ggml-rpc-server did not start\n  {tail}", hint="see its messages above")
    print(f"runq worker listening on {host}:{port}, lending:")
    print("\n".join(devices))
    print(f"On the main host: runq plan MODEL --rpc {public(host)}:{port}  (or runq run … --rpc …)", flush=True)


def _bound(host: str, port: int) -> bool:
    """Whether something listens on host:port (binding it fails), without connecting: a connection would be a
    client to the worker."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def public(host: str) -> str:
    return "THIS_HOST" if host in ("0.0.0.0", "::") else host


def _lines(proc: subprocess.Popen[bytes], master: int, timeout: float | None) -> Iterator[str]:
    """Lines from the pseudo-terminal until the process ends (or `timeout` seconds pass without one)."""
    buf = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout if timeout is not None else 1.0)
        if not ready:
            if timeout is not None or proc.poll() is not None:
                return
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other side closed
            return
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace").rstrip("\r")


def cmd_wait_workers(args: argparse.Namespace) -> int:
    """ExecStartPre of a service whose plan uses workers: wait (bounded) until each answers with at least the
    memory the plan puts on it. A worker with less is named, with what to do: re-plan with its real memory."""
    from launcher.errors import WorkerUnreachable
    from launcher.llama.rpc import probe

    need: dict[str, list[tuple[int, int]]] = {}
    for item in args.need:
        ep, _, rest = item.rpartition("/")
        index, _, size = rest.partition(":")
        need.setdefault(ep, []).append((int(index), int(size)))
    server = Path(args.llama_bin) / "llama-server"
    t0 = time.monotonic()
    while True:
        problems = []
        for ep, wanted in need.items():
            try:
                devices = {d.index: d for d in probe(ep, server).devices}
            except WorkerUnreachable as e:
                problems.append(e.message)
                continue
            for index, size in wanted:
                have = devices[index].free_bytes if index in devices else 0
                if have < size:
                    problems.append(f"worker {ep} device {index} has {have >> 20} MiB free, the plan needs "
                                    f"{size >> 20} MiB")  # fmt: skip
        if not problems:
            print(f"workers ready after {time.monotonic() - t0:.0f} s", flush=True)
            return EXIT_OK
        if time.monotonic() - t0 > args.timeout:
            for p in problems:
                print(f"Error: {p}", file=sys.stderr)
            print("Hint: start the worker, or re-plan with what it has: runq service install … --rpc … --force",
                  file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(2)
