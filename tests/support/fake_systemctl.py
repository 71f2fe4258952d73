#!/usr/bin/env python3
"""A stand-in for systemctl in the tests: records every call, and really runs a unit's
ExecStartPre / ExecStart / ExecStartPost on start (so the unit's own commands are exercised), stops it on stop."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

state = Path(os.environ["FAKE_SYSTEMD_DIR"])
state.mkdir(parents=True, exist_ok=True)
unit_dir = Path(os.environ["RUNQ_UNIT_DIR"])
args = sys.argv[1:]
with (state / "calls.jsonl").open("a") as f:
    f.write(json.dumps(args) + "\n")
words = [a for a in args if a != "--user"]


def commands(unit: str, key: str) -> list[list[str]]:
    out = []
    for line in (unit_dir / unit).read_text().splitlines():
        if line.startswith(f"{key}="):
            out.append([w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line.split("=", 1)[1])])
    return out


def pid_of(unit: str) -> int | None:
    p = state / f"{unit}.pid"
    if not p.exists():
        return None
    pid = int(p.read_text())
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def stop(unit: str) -> None:
    pid = pid_of(unit)
    if pid:
        os.killpg(pid, signal.SIGTERM)
    (state / f"{unit}.pid").unlink(missing_ok=True)


def _defaults() -> None:
    """What systemd gives a service: every signal at its default, whatever the test runner inherited (nohup)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start(unit: str) -> int:
    for line in (unit_dir / unit).read_text().splitlines():  # what systemd does for StateDirectory=
        if line.startswith("StateDirectory="):
            (Path(os.environ["RUNQ_STATE_DIR"]) / line.split("=", 1)[1]).mkdir(parents=True, exist_ok=True)
    for pre in commands(unit, "ExecStartPre"):
        if subprocess.run(pre).returncode != 0:
            return 1
    (main,) = commands(unit, "ExecStart")
    log = (state / f"{unit}.out").open("ab")
    proc = subprocess.Popen(main, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_defaults)
    (state / f"{unit}.pid").write_text(str(proc.pid))
    for post in commands(unit, "ExecStartPost"):
        r = subprocess.run(post, capture_output=True, text=True)
        if r.returncode != 0:
            stop(unit)
            sys.stderr.write(f"Job for {unit} failed: ExecStartPost: {r.stderr}")
            return 1
    return 0


cmd, units = words[0], [w for w in words[1:] if w.endswith(".service")]
code = 0
if cmd in ("start", "restart") or (cmd == "enable" and "--now" in words):
    for u in units:
        stop(u)
        code = code or start(u)
elif cmd in ("stop", "disable"):
    for u in units:
        if cmd == "stop":
            stop(u)
elif cmd == "is-active":
    print("active" if pid_of(units[0]) else "inactive")
    code = 0 if pid_of(units[0]) else 3
elif cmd == "show":
    pid = pid_of(units[0])
    print(f"ActiveState={'active' if pid else 'inactive'}\nSubState={'running' if pid else 'dead'}\n"
          f"MainPID={pid or 0}\nNRestarts=0")  # fmt: skip
sys.exit(code)
