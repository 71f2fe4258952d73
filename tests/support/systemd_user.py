"""A real, private `systemd --user` manager for root, for tests on a machine where systemd is not PID 1.

The recipe (measured in /work/notes/24-research.md, section 1a):
- The manager takes its own cgroup as its root and moves every process of that cgroup into `init.scope`: started
  from the root cgroup it would move PID 1 and everything else. So the manager first moves itself into a fresh
  sub-cgroup of the test's own (`…/runq-test-PID.slice/user@0.service`, in the name=systemd and cgroup2
  hierarchies), which is removed at the end.
- It runs in its own mount namespace: a tmpfs on /run/systemd with `system/` (systemd's "booted with systemd"
  marker, seen only there), `unit-root/` and the `inaccessible/` nodes a uid-0 manager uses for its sandbox masks;
  a private journal (/run/log, /var/log/journal) and /dev/console bound to a file (where it logs without one).
- Its XDG directories live under BASE, which must not be under /tmp: PrivateTmp= hides /tmp from the units.
- journald runs as a unit of the manager; journalctl must read it from inside the namespace (nsenter), so runq
  gets a RUNQ_JOURNALCTL wrapper.
Client tools (systemctl --user) talk to it over $XDG_RUNTIME_DIR/systemd/private from the host namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCRIPT = r"""#!/bin/sh
set -e
for d in "$@"; do mkdir -p "$d"; echo $$ > "$d/cgroup.procs"; done
exec unshare --mount --propagation private -- sh -c '
  mount -t tmpfs -o mode=755 tmpfs /run/systemd && mkdir /run/systemd/system && mkdir -m 0700 /run/systemd/unit-root
  I=/run/systemd/inaccessible; mkdir -m 0755 $I && touch $I/reg && chmod 0 $I/reg && mkdir -m 0 $I/dir &&
    mkfifo -m 0 $I/fifo && mknod -m 0 $I/chr c 0 0 && mknod -m 0 $I/blk b 0 0 &&
    python3 -c "import os, stat; os.mknod(\"$I/sock\", stat.S_IFSOCK)" && chmod 0 $I/sock
  mkdir -p /run/log /var/log/journal
  mount -t tmpfs -o mode=755 tmpfs /run/log
  mount -t tmpfs -o mode=755 tmpfs /var/log/journal
  mount --bind "$RUNQ_TEST_CONSOLE" /dev/console
  exec /lib/systemd/systemd --user'
"""
JOURNALD = """[Unit]
Description=journald for the test's user manager
[Service]
Type=notify
ExecStart=/lib/systemd/systemd-journald
StandardOutput=null
"""
USER_CONF = """[Manager]
DefaultCPUAccounting=no
DefaultMemoryAccounting=no
DefaultTasksAccounting=no
DefaultIOAccounting=no
DefaultIPAccounting=no
"""


def why_not() -> str | None:
    """Why a private manager cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a cgroup of its own and a mount namespace)"
    for tool in ("unshare", "nsenter", "systemctl", "journalctl", "python3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for path in ("/lib/systemd/systemd", "/lib/systemd/systemd-journald"):
        if not Path(path).is_file():
            return f"{path} is missing (apt-get install systemd)"
    found, expected = own_cgroups(), _hierarchies()
    if not found or len(found) != len(expected):
        # Never start a manager in a hierarchy where it could not be moved into a sub-cgroup first: it would take
        # the root cgroup for its own and move every process of the machine into its init.scope.
        return f"cannot make a sub-cgroup in every cgroup hierarchy systemd uses ({', '.join(expected) or 'none'})"
    return None


def _hierarchies() -> list[str]:
    return sorted(_mounts())


def _mounts() -> dict[str, Path]:
    """The cgroup hierarchies systemd uses, by their /proc/self/cgroup key: "" (cgroup2), "name=systemd" (v1)."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _, options = post.split(" ", 2)
        point = Path(pre.split()[4])
        if fstype == "cgroup2":
            mounts.setdefault("", point)
        elif fstype == "cgroup" and "name=systemd" in options:
            mounts.setdefault("name=systemd", point)
    return mounts


def own_cgroups() -> list[Path]:
    """The directories of this process's own cgroup in the name=systemd and cgroup2 hierarchies (writable ones)."""
    mounts = _mounts()
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in mounts and os.access(mounts[controllers], os.W_OK):
            out.append(mounts[controllers] / path.lstrip("/"))
    return out


@dataclass
class UserManager:
    base: Path  # everything of this manager: XDG dirs, console log, wrapper scripts
    proc: subprocess.Popen[bytes]
    slices: list[Path]  # the cgroups made for it (removed at the end)
    env: dict[str, str]  # for systemctl --user and runq: the manager's XDG dirs, RUNQ_JOURNALCTL
    started_s: float  # until systemctl --user answered

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, env=self.env, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)}: {r.stdout}{r.stderr}\n{self.console()}")
        return r

    def show(self, unit: str) -> dict[str, str]:
        r = self.systemctl("show", unit, "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", "-p", "NRestarts",
                           "-p", "Result", check=False)  # fmt: skip
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "console.log").read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        """SIGTERM (a user manager then starts exit.target: its units stop), SIGKILL to anything left in its
        cgroups, then the cgroups and BASE removed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for root in self.slices:
            for procs in sorted(root.rglob("cgroup.procs"), key=lambda p: len(p.parts), reverse=True):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for root in self.slices:
            deadline = time.monotonic() + 10
            for d in sorted((p for p in [root, *root.rglob("*")] if p.is_dir()), key=lambda p: len(p.parts),
                            reverse=True):  # fmt: skip
                while True:
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # still busy: a killed process is not reaped yet
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)


def start(base: Path, timeout: float = 30) -> UserManager:
    """A private user manager with journald, its dirs under `base` (not under /tmp)."""
    assert not str(base.resolve()).startswith(("/tmp/", "/var/tmp/")), "units would not see it (PrivateTmp)"
    cfg, state, data, run = base / "config", base / "state", base / "share", base / "run"
    for d in (cfg / "systemd" / "user", state, data, run):
        d.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    (cfg / "systemd" / "user.conf").write_text(USER_CONF)  # units stay in the caller's controllers
    (cfg / "systemd" / "user" / "runq-test-journald.service").write_text(JOURNALD)
    (base / "console.log").write_text("")
    script = base / "manager.sh"
    script.write_text(SCRIPT)
    slice_name = f"runq-test-{os.getpid()}-{uuid.uuid4().hex[:6]}.slice"
    slices = [own / slice_name for own in own_cgroups()]
    xdg = {"XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(cfg), "XDG_STATE_HOME": str(state),
           "XDG_DATA_HOME": str(data)}  # fmt: skip
    console = str(base / "console.log")
    manager_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                   "USER": "root", "LANG": "C.UTF-8", "RUNQ_TEST_CONSOLE": console, **xdg}  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(["sh", str(script), *(str(s / "user@0.service") for s in slices)], env=manager_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    wrapper = base / "journalctl"
    wrapper.write_text(f'#!/bin/sh\nexec nsenter -t {proc.pid} -m journalctl "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, **xdg, "RUNQ_JOURNALCTL": str(wrapper)}
    for var in ("RUNQ_HOME", "RUNQ_SYSTEMCTL", "RUNQ_UNIT_DIR", "RUNQ_STATE_DIR", "DBUS_SESSION_BUS_ADDRESS"):
        env.pop(var, None)  # the units' own runq must find the records where this runq writes them
    m = UserManager(base, proc, slices, env, 0.0)
    try:
        while subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, env=env).returncode:
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise AssertionError(f"the user manager did not come up (exit {proc.poll()}): {m.console()}")
            time.sleep(0.05)
        m.started_s = time.monotonic() - t0
        m.systemctl("start", "runq-test-journald.service")
        m.systemctl("log-target", "journal")
    except BaseException:
        m.stop()
        raise
    return m
