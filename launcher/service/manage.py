"""Services for home servers: saved plans, unit files, systemctl — the edge of `runq service`.

Every write is atomic (temp file + rename); systemctl and journalctl are
called through one small runner (RUNQ_SYSTEMCTL / RUNQ_JOURNALCTL name other
executables, which the tests use to record the calls). Removing a service
deletes its unit and saved plan, never a model or a build.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from launcher.errors import ServiceError, SystemctlFailed, UsageError, format_validation_error
from launcher.llama import procs
from launcher.paths import config_dir
from launcher.plan.projection import ESTIMATE
from launcher.plan.types import DevicePlan
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

    def preset_path(self, name: str) -> Path:
        """A router service's model presets (llama-server --models-preset), beside its record."""
        return self.record_dir / f"{name}.ini"


class _Saved(BaseModel):
    # runq's own files: a newer runq may add keys (ignored), a record that does not validate is named, not a traceback.
    model_config = ConfigDict(extra="ignore", frozen=True)


class SavedDevice(_Saved):
    name: str
    capacity_bytes: int
    margin_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    extra_bytes: int = 0
    remote: bool = False
    kv_source: str = ESTIMATE
    compute_source: str = ESTIMATE
    lazy_bytes: int = 0  # lookup tables llama.cpp maps and reads on demand (its CPU_Mapped buffer of their own)

    def device(self) -> DevicePlan:
        return DevicePlan(**self.model_dump())


class SavedPlan(_Saved):
    """The part of a plan the service checks llama.cpp against after every start (llama/log.py's verify)."""

    ctx: int
    ubatch: int = 512
    threads: int = 1
    ngl: int = 0
    load_mode: str = "mmap"
    devices: list[SavedDevice] = []
    overrides: list[str] = []
    predicted_tg_tps: float = 0.0
    speed_source: str = ""

    @property
    def view(self) -> Placed:
        return Placed(tuple(d.device() for d in self.devices))


@dataclass(frozen=True)
class Placed:
    """Devices of a saved plan, as the placement check reads a Plan's."""

    devices: tuple[DevicePlan, ...]

    @property
    def gpu_devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.name != "CPU" and not d.remote)


class RoutedModel(_Saved):
    """One model of a router service: its API id, the command the router runs it with, its plan and log."""

    id: str
    model: str
    quant: str
    argv: list[str]
    log_path: str
    plan: SavedPlan
    gpus: list[tuple[int, int]] = []


class Record(_Saved):
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
    plan: SavedPlan | None = None  # None for a worker (older runq wrote {})
    api_key_file: str | None = None
    kind: Literal["model", "worker", "router"] = "model"  # worker: `runq worker` (no model); router: `models`
    models: list[RoutedModel] = []  # a router's models (llama-server --models-preset)
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @field_validator("plan", mode="before")
    @classmethod
    def _no_plan(cls, v: object) -> object:
        return None if v == {} else v

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"no runq service {path.stem!r}", hint="see `runq service list`") from None
        except (OSError, ValueError) as e:
            why = format_validation_error(e) if isinstance(e, ValidationError) else str(e)
            raise ServiceError(f"{path}: not a runq service record ({why})",
                               hint="install the service again: runq service install … --force") from None  # fmt: skip


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
            r = procs.run(argv, capture_output=True, text=True, timeout=timeout)
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
    for p in (unit, record, loc.preset_path(name)):
        if p.exists():
            p.unlink()
            gone.append(str(p))
    systemd.systemctl("daemon-reload", check=False)
    return gone
