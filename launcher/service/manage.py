"""Services for home servers: saved plans, unit files, systemctl — the edge of `runq service`.

Every write is atomic (temp file + rename); systemctl and journalctl are
called through one small runner (RUNQ_SYSTEMCTL / RUNQ_JOURNALCTL name other
executables, which the tests use to record the calls). Removing a service
deletes its unit and saved plan, never a model or a build.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from launcher.errors import ServiceError, SystemctlFailed, UsageError
from launcher.paths import config_dir
from launcher.service.unit import MARKER, unit_name

Mode = Literal["user", "system"]


@dataclass(frozen=True)
class Locations:
    mode: Mode
    unit_dir: Path
    record_dir: Path
    state_root: Path

    @classmethod
    def for_mode(cls, mode: Mode) -> Locations:
        env = os.environ
        if mode == "user":
            cfg = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            unit_dir = cfg / "systemd" / "user"
            record_dir = config_dir() / "services"
            state_root = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        else:
            unit_dir = Path("/etc/systemd/system")
            record_dir = Path(env.get("RUNQ_SYSTEM_CONFIG_DIR") or "/etc/runq") / "services"
            state_root = Path("/var/lib")
        if v := env.get("RUNQ_UNIT_DIR"):
            unit_dir = Path(v)
        if v := env.get("RUNQ_STATE_DIR"):
            state_root = Path(v)
        return cls(mode, unit_dir, record_dir, state_root)

    def unit_path(self, name: str) -> Path:
        return self.unit_dir / unit_name(name)

    def record_path(self, name: str) -> Path:
        return self.record_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.state_root / "runq" / name / "llama-server.log"


@dataclass
class Record:
    """The saved plan a service runs: what boot starts, without planning or downloading again."""

    name: str
    mode: Mode
    model: str
    quant: str
    host: str
    port: int
    argv: list[str]
    log_path: str
    gpus: list[tuple[int, int]]
    plan: dict[str, Any]
    api_key_file: str | None = None
    kind: str = "model"  # or "worker": a `runq worker` (ggml-rpc-server), no model, no plan
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            data = json.loads(path.read_text())
            data["gpus"] = [tuple(g) for g in data.get("gpus", [])]
            return cls(**data)
        except FileNotFoundError:
            raise UsageError(f"no runq service {path.stem!r}", hint="see `runq service list`") from None
        except (ValueError, TypeError) as e:
            raise ServiceError(f"{path}: not a runq service record ({e})") from None


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def records(loc: Locations) -> list[Record]:
    if not loc.record_dir.is_dir():
        return []
    return [Record.load(p) for p in sorted(loc.record_dir.glob("*.json"))]


def check_unit_slot(loc: Locations, name: str, text: str, force: bool) -> bool:
    """True when the unit must be written; refuses to clobber what runq did not write, or changes without --force."""
    path = loc.unit_path(name)
    if not path.exists():
        return True
    current = path.read_text(errors="replace")
    if MARKER not in current:
        raise ServiceError(
            f"{path} exists and was not written by runq",
            hint="choose another --name, or move that unit away yourself",
        )
    if current == text:
        return False
    if not force:
        raise ServiceError(
            f"{path} exists with a different plan",
            hint="add --force to replace it (or `runq service remove` first)",
        )
    return True


def check_port(loc: Locations, name: str, port: int) -> None:
    for r in records(loc):
        if r.name != name and r.port == port:
            raise UsageError(f"port {port} is already used by the runq service {r.name!r}", hint="pick another --port")


class Systemd:
    """systemctl and journalctl, for user or system units."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.systemctl_exe = os.environ.get("RUNQ_SYSTEMCTL", "systemctl")
        self.journalctl_exe = os.environ.get("RUNQ_JOURNALCTL", "journalctl")

    def _scope(self) -> list[str]:
        return ["--user"] if self.mode == "user" else []

    def systemctl(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.systemctl_exe, *self._scope(), *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise SystemctlFailed(
                f"{self.systemctl_exe} not found: this machine does not run systemd",
                hint="use `runq service render` and install the unit with your init system",
            ) from None
        if check and r.returncode != 0:
            unit = next((a for a in args if a.endswith(".service")), None)
            name = unit.removeprefix("runq-").removesuffix(".service") if unit else None
            raise SystemctlFailed(
                f"systemctl {' '.join(args)} failed: {(r.stderr or r.stdout).strip()}",
                hint=f"see `runq service logs {name}`" if name else None,
            )
        return r

    def check(self) -> None:
        """Fail before writing anything when there is no systemd manager to talk to."""
        r = self.systemctl("show-environment", check=False, timeout=15)
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip()
            raise SystemctlFailed(
                f"cannot reach the systemd {'user ' if self.mode == 'user' else ''}manager: {why}",
                hint="run it from a login session (or `loginctl enable-linger $USER` first); "
                "`runq service render` prints the unit for other setups",
            )

    def show(self, unit: str) -> dict[str, str]:
        r = self.systemctl("show", unit, "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", "-p", "NRestarts",
                           check=False)  # fmt: skip
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def journal_argv(self, unit: str, follow: bool) -> list[str]:
        scope = ["--user-unit", unit] if self.mode == "user" else ["-u", unit]
        return [self.journalctl_exe, *scope, "-n", "200", "--no-pager", *(["-f"] if follow else [])]


def remove(loc: Locations, name: str, systemd: Systemd) -> list[str]:
    """Stop, disable, delete the unit and the saved plan; returns what was deleted."""
    unit = loc.unit_path(name)
    record = loc.record_path(name)
    if not unit.exists() and not record.exists():
        raise UsageError(f"no runq service {name!r}", hint="see `runq service list`")
    if unit.exists() and MARKER not in unit.read_text(errors="replace"):
        raise ServiceError(f"{unit} was not written by runq: leaving it alone")
    systemd.systemctl("stop", unit_name(name), check=False)
    systemd.systemctl("disable", unit_name(name), check=False)
    gone = []
    for p in (unit, record):
        if p.exists():
            p.unlink()
            gone.append(str(p))
    systemd.systemctl("daemon-reload", check=False)
    return gone
