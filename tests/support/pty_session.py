"""A command under a pseudo-terminal, as a person at a terminal runs it: keys in, the screen's text out.

The child is the leader of its own session with the pty as its controlling terminal, so a Ctrl-C typed into it
reaches its foreground process group the way a real terminal's does. Its SIGINT disposition is reset to the
default first (a test runner started in the background may ignore SIGINT, and children inherit that).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping

_CSI_RE = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>78]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
KEYS = {"enter": b"\r", "end": b"\x1b[F", "home": b"\x1b[H", "down": b"\x1b[B", "up": b"\x1b[A", "ctrl+c": b"\x03"}


def _controlling_tty() -> None:
    """In the child, between fork and exec (after setsid): the pty on fd 0 becomes its controlling terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    def __init__(self, argv: list[str], env: Mapping[str, str], size: tuple[int, int] = (40, 160)) -> None:
        self.master, slave = os.openpty()
        rows, cols = size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=dict(env), start_new_session=True,
            preexec_fn=_controlling_tty,  # two system calls, no locks taken
        )  # fmt: skip
        os.close(slave)
        self.raw = b""
        self.mark = 0  # expect() looks at the text after this point

    def text(self) -> str:
        return _CSI_RE.sub("", self.raw.decode(errors="replace"))

    def _read(self, wait_s: float) -> bool:
        """Read what the child wrote in the next `wait_s` seconds; False once it has closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], wait_s)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the pty has exited
            return False
        self.raw += data
        return bool(data)

    def expect(self, needle: str, timeout_s: float = 120) -> float:
        """Wait until `needle` appears in the screen text written since the last expect(); seconds it took."""
        t0 = time.monotonic()
        while True:
            at = self.text().find(needle, self.mark)
            if at >= 0:
                self.mark = at + len(needle)
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s or not self._read(0.2):
                tail = self.text()[-3000:]
                raise AssertionError(f"{needle!r} not seen in {time.monotonic() - t0:.0f} s; the screen ended:\n{tail}")

    def press(self, *keys: str) -> None:
        for key in keys:
            os.write(self.master, KEYS.get(key, key.encode()))

    def wait(self, timeout_s: float = 60) -> int:
        """The child's exit status, reading its last output meanwhile (a full pty would block it)."""
        t0 = time.monotonic()
        while self.proc.poll() is None and time.monotonic() - t0 < timeout_s:
            if not self._read(0.2):
                break
        return self.proc.wait(max(1.0, timeout_s - (time.monotonic() - t0)))

    def close(self) -> None:
        """Stop whatever is left of the session (the child and what it started), then the pty."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
