"""Children that never outlive runq: the parent-death signal, SIGTERM/SIGHUP as an interrupt, a stop-at-exit registry.

However runq ends, the processes it started end with it (DESIGN: "they stop when runq stops, however it
stops, unless systemd owns them"):

- Ctrl-C, SIGTERM, SIGHUP (a closed terminal, a dropped SSH session): `trap_signals()` turns SIGTERM and SIGHUP
  into `Terminated`, a KeyboardInterrupt, so the same `except KeyboardInterrupt` paths stop the child in order.
- An exception nobody catches (runq crashing), or any other exit of the interpreter: `stop_at_exit()` registers
  the child's stop with atexit.
- SIGKILL of runq, or a crash of the interpreter itself: nothing in runq runs any more, so the kernel does it:
  on Linux the child asks (prctl PR_SET_PDEATHSIG, between fork and exec) for SIGKILL when its parent dies.
  The parent is the *thread* that forked: start children from the main thread (or one that outlives them).

A service's llama-server is systemd's child, not runq's, so none of this touches it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """runq got SIGTERM or SIGHUP: handled like Ctrl-C (stop the children, exit 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when runq dies (Linux); None elsewhere.

    libc and prctl are looked up here, in the parent, so the child only makes one system call after fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # runq died between fork and prctl: nobody would stop us
            os._exit(1)

    return setup


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen for a child that dies with runq (the preexec_fn is one prctl call, prepared before the
    fork, so it is safe with threads around). SIGTERM/SIGHUP are trapped first: one that comes while the child
    starts is an interrupt the caller handles, not the end of runq."""
    trap_signals()
    return subprocess.Popen(argv, preexec_fn=die_with_parent(), **kwargs)  # noqa: PLW1509


def run(argv: list[str], *, timeout: float | None = None, capture_output: bool = False, text: bool = False,
        **kwargs: Any) -> subprocess.CompletedProcess[Any]:  # fmt: skip
    """subprocess.run for runq's short commands (a --help, a projection, systemctl): the child dies with runq
    and is killed when runq is interrupted while it runs. subprocess.run alone leaves it behind on SIGKILL, or on
    SIGTERM before any handler is installed: a `--help` frozen on a slow disk would then outlive runq."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with spawn(argv, text=text, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:  # a timeout, Ctrl-C, SIGTERM/SIGHUP (Terminated): SIGKILL answers even a frozen child
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def trap_signals() -> None:
    """SIGTERM and SIGHUP raise Terminated in the main thread (a no-op elsewhere, where Python cannot trap)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_terminated)


_at_exit: list[Callable[[], object]] = []


def _run_at_exit() -> None:
    while _at_exit:
        stop = _at_exit.pop()
        with contextlib.suppress(Exception, KeyboardInterrupt):
            stop()


atexit.register(_run_at_exit)


def stop_at_exit(stop: Callable[[], object]) -> None:
    _at_exit.append(stop)


def forget_at_exit(stop: Callable[[], object]) -> None:
    with contextlib.suppress(ValueError):
        _at_exit.remove(stop)


def run_foreground(argv: list[str]) -> int:
    """Run an interactive child (llama-cli) that owns the terminal until it exits; returns its exit status.

    Ctrl-C belongs to the child (llama-cli stops a reply with it, and quits on a second one): runq ignores
    SIGINT meanwhile. SIGTERM/SIGHUP to runq stop the child; runq's death kills it (PR_SET_PDEATHSIG).
    """
    proc = spawn(argv)
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_child(proc, grace=5)
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def stop_group(proc: subprocess.Popen[Any], grace: float = 5) -> None:
    """Stop a child started with start_new_session=True and everything it started (make and its compilers):
    SIGTERM to the group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # grandchildren that outlived the group's leader


def stop_child(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode
