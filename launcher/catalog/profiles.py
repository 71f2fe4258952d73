"""Model profiles (profiles/*.toml) as validated Profile values; template lookup; name matching.

Pure apart from reading the packaged data files. A profile is data: the Hub
repo, the architecture (enough to build the real tensor list before any
download), the quants with their published sizes, sampling settings and the
fixed chat template. A bad profile is an error naming the file and the field.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from launcher.catalog.arch_spec import ArchSpec  # re-exported: the architecture part of a profile
from launcher.errors import UsageError, format_validation_error
from launcher.model.ggml_types import TYPES_BY_NAME
from launcher.model.shards import SHARD_RE
from launcher.paths import config_dir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertBits(_Strict):
    down: float = Field(gt=0, le=32)
    up: float = Field(gt=0, le=32)
    gate: float = Field(gt=0, le=32)


class QuantSpec(_Strict):
    name: str = Field(min_length=1)
    path: str = Field(min_length=6, description="repo path of the single file or of shard 1")
    size_bytes: int = Field(gt=0, description="published size of all files, bytes")
    expert_bits: ExpertBits | None = None
    expert_type: str | None = None  # all routed experts in one native type whatever the quant (gpt-oss: MXFP4)
    lazy_type: str | None = None  # the lazy lookup tables' type when known (Qwen3.8-Flash-Next's PLE table: Q4_0)
    confirmed: bool = False  # size and layout read from the Hub or a real header (not docs or seed figures)
    # Where size_bytes comes from: "hub" (a listing or header: confirmed), "published" (Unsloth's docs or a
    # page quoting them), "approximate" (derived, e.g. from a sister model's size or parameters x bits).
    size_source: Literal["hub", "published", "approximate"] = "published"

    @model_validator(mode="after")
    def _path(self) -> QuantSpec:
        name = self.path.rsplit("/", 1)[-1]
        if not name.endswith(".gguf"):
            raise ValueError(f"path {self.path!r} must name a .gguf file")
        m = SHARD_RE.match(name)
        if m and int(m.group("no")) != 1:
            raise ValueError(f"path {self.path!r} must name shard 1 of the set")
        return self

    @model_validator(mode="after")
    def _source(self) -> QuantSpec:
        for field, value in (("expert_type", self.expert_type), ("lazy_type", self.lazy_type)):
            if value is not None and value not in TYPES_BY_NAME:
                raise ValueError(f"{field} {value!r} is not a ggml type")
        if self.confirmed != (self.size_source == "hub"):
            raise ValueError('confirmed = true goes with size_source = "hub" (and only with it)')
        return self

    @property
    def shards(self) -> int:
        m = SHARD_RE.match(self.path.rsplit("/", 1)[-1])
        return int(m.group("count")) if m else 1


class Sampling(_Strict):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = None
    seed: int | None = None


BuildQuirk = Literal["cuda_force_cublas"]  # MiniMax: NaN on CUDA with Q4_K/Q5_K blk.61.ffn_down_exps otherwise


class Profile(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    display_name: str
    aliases: list[str] = []
    # Published parameter counts, billions (None: counted from the architecture's tensor list).
    params_b: float | None = Field(default=None, gt=0)
    active_b: float | None = Field(default=None, gt=0)
    repo: str = Field(pattern=r"^[\w.\-]+/[\w.\-]+$")
    revision: str = "main"
    template: str | None = None
    default_ctx: int = Field(gt=0)
    notes: str = ""
    arch: ArchSpec
    sampling: Sampling = Sampling()  # the default mode's settings (what runq passes)
    modes: dict[str, Sampling] = {}  # every mode's recommended settings ("thinking", "non-thinking", …)
    build_quirks: list[BuildQuirk] = []
    quants: list[QuantSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> Profile:
        names = [q.name for q in self.quants]
        if len(set(names)) != len(names):
            raise ValueError("quant names must be unique")
        if self.default_ctx > self.arch.context_length:
            raise ValueError(f"default_ctx {self.default_ctx} exceeds the model's {self.arch.context_length}")
        return self

    def quant(self, name: str) -> QuantSpec:
        wanted = _norm_quant(name)
        for q in self.quants:
            if _norm_quant(q.name) == wanted:
                return q
        raise UsageError(
            f"{self.name} has no quant {name!r}",
            hint="choose one of: " + ", ".join(q.name for q in self.quants),
        )

    def quants_by_size(self) -> list[QuantSpec]:
        return sorted(self.quants, key=lambda q: q.size_bytes)

    def template_path(self) -> Path | None:
        return template_path(self.template) if self.template else None


def _norm_quant(name: str) -> str:
    """'Q2_K_XL', 'ud-q2_k_xl' and 'UD-Q2_K_XL' name the same quant."""
    return name.upper().removeprefix("UD-")


def _data_dir(kind: str) -> Path:
    """profiles/ or templates/: inside the installed package, or at the top of a source checkout."""
    inside = Path(str(importlib.resources.files("launcher"))) / kind
    if inside.is_dir():  # installed from a wheel
        return inside
    return Path(__file__).resolve().parents[2] / kind  # a source checkout (editable install)


def profiles_dir() -> Path:
    return _data_dir("profiles")


def templates_dir() -> Path:
    return _data_dir("templates")


def template_path(name: str) -> Path:
    p = templates_dir() / name
    if not p.is_file():
        raise UsageError(f"template {name!r} is not in {templates_dir()}")
    return p


def parse_profile(text: str, source: str) -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source}: not valid TOML: {e}") from None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        raise UsageError(f"{source}: {format_validation_error(e)}") from None
    if profile.template and not (templates_dir() / profile.template).is_file():
        raise UsageError(f"{source}: template: {profile.template!r} is not in {templates_dir()}")
    return profile


@cache
def _packaged_profiles() -> tuple[Profile, ...]:
    return tuple(
        parse_profile(path.read_text(encoding="utf-8"), f"profiles/{path.name}")
        for path in sorted(profiles_dir().glob("*.toml"))
    )


def user_profiles_dir() -> Path:
    return config_dir() / "profiles"


def load_profiles() -> tuple[Profile, ...]:
    """The packaged profiles, and the user's own (~/.config/runq/profiles/*.toml), which win by name.
    A user profile that cannot be read is left out (profile_notes() says why): it must not block every command."""
    return _load_all()[0]


def profile_notes() -> tuple[str, ...]:
    """What the user should know about their own profiles: the ones left out, and the ones replacing runq's."""
    return _load_all()[1]


def _load_all() -> tuple[tuple[Profile, ...], tuple[str, ...]]:
    user = user_profiles_dir()
    paths = sorted(user.glob("*.toml")) if user.is_dir() else []
    stamp = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        stamp.append((str(path), st.st_mtime_ns, st.st_size))
    return _load_with(tuple(stamp))


@cache
def _load_with(stamp: tuple[tuple[str, int, int], ...]) -> tuple[tuple[Profile, ...], tuple[str, ...]]:
    packaged = {p.name: p for p in _packaged_profiles()}
    by_name = dict(packaged)
    notes = []
    for path_text, _, _ in stamp:
        path = Path(path_text)
        try:
            p = parse_profile(path.read_text(encoding="utf-8"), str(path))
        except OSError as e:
            notes.append(f"left out your profile {path}: cannot read it ({e.strerror})")
            continue
        except UnicodeDecodeError:
            notes.append(f"left out your profile {path}: it is not UTF-8 text")
            continue
        except UsageError as e:
            notes.append(f"left out your profile {e.message}")
            continue
        if p.name in packaged:
            notes.append(f"your profile {path} replaces runq's {p.name!r}")
        by_name[p.name] = p
    return tuple(by_name.values()), tuple(notes)


REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def find_profile(name: str) -> Profile | None:
    """A profile by name, alias or Hub repo id (any case)."""
    wanted = name.lower()
    for p in load_profiles():
        if wanted == p.name or wanted in p.aliases or wanted == p.repo.lower():
            return p
    return None


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def suggestions(name: str, limit: int = 3) -> list[str]:
    """Known names closest to a mistyped one: 'deepseek-v31' -> ['deepseek-v3.1']."""
    names = {n: p.name for p in load_profiles() for n in (p.name, *p.aliases)}
    squashed = {_squash(n): target for n, target in names.items()}
    out: list[str] = []
    exact = squashed.get(_squash(name))
    if exact:
        out.append(exact)
    for n in difflib.get_close_matches(name.lower(), list(names), n=limit * 2, cutoff=0.6):
        if names[n] not in out:
            out.append(names[n])
    for n in difflib.get_close_matches(_squash(name), list(squashed), n=limit * 2, cutoff=0.6):
        if squashed[n] not in out:
            out.append(squashed[n])
    return out[:limit]


def profile_for_file(path: str) -> tuple[Profile, QuantSpec] | None:
    """The profile and quant a downloaded file belongs to, recognised by its file name."""
    name = path.rsplit("/", 1)[-1]
    for p in load_profiles():
        for q in p.quants:
            if q.path.rsplit("/", 1)[-1] == name:
                return p, q
    return None


def require_profile(name: str) -> Profile:
    """A catalog profile (by name, alias or repo id); a typo gets the closest names. A Hub repo id outside the
    catalog becomes a profile in `target.require_profile` (it reads the repo)."""
    p = find_profile(name)
    if p is not None:
        return p
    close = suggestions(name)
    if close:
        raise UsageError(
            f"no model called {name!r}: did you mean {' or '.join(close)}?",
            hint="`runq models` lists the catalog; a Hub repo id (unsloth/NAME-GGUF) or a .gguf path also works",
        )
    known = ", ".join(p.name for p in load_profiles())
    raise UsageError(
        f"no model called {name!r}",
        hint=f"known models: {known}; or a Hub repo id (unsloth/NAME-GGUF), or the path of a .gguf file",
    )
