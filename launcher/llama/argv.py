"""A Plan as a llama.cpp command line (llama-server or llama-cli). Pure: builds argv lists, runs nothing."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from launcher.catalog.profiles import Profile, Sampling
from launcher.catalog.sampling import to_pass
from launcher.plan.inputs import ServerOptions
from launcher.plan.types import Plan


@dataclass(frozen=True)
class Launch:
    binary: str  # path or name of llama-server / llama-cli
    model_path: str
    sampling: Sampling | None = None
    template_path: str | None = None
    server: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    extra: tuple[str, ...] = ()  # the user's own flags (after `--`), passed last
    # llama.cpp prints its memory breakdown (what runq verifies) from -lv 4; -lv 5 adds per-tensor placement.
    log_verbosity: int | None = 4
    flags: Mapping[str, bool] | None = None  # what the binary accepts (capabilities); None: the pinned build


def _num(x: float) -> str:
    return f"{x:g}"


def plan_flags(plan: Plan, flags: Mapping[str, bool] | None = None) -> list[str]:
    """The placement part of the command: what the planner decided, in the flags this build accepts
    (`flags` from capabilities.parse_help; None means the pinned commit's)."""

    def has(name: str) -> bool:
        return flags is None or flags.get(name, False)

    args = []
    if plan.rpc:  # first: llama.cpp registers the workers' devices when it reads --rpc, and -ot names them
        args += ["--rpc", ",".join(plan.rpc)]
    args += ["-c", str(plan.ctx), "-ngl", str(plan.ngl)]
    if has("fit"):  # on by default since late 2025: off, so llama.cpp keeps runq's placement
        args += ["--fit", "off"]
    for o in plan.overrides:
        args += ["-ot", str(o)]
    if plan.tensor_split:
        args += ["-ts", ",".join(str(n) for n in plan.tensor_split)]
    if plan.cache_type_k != "f16":
        args += ["-ctk", plan.cache_type_k]
    if plan.cache_type_v != "f16":
        args += ["-ctv", plan.cache_type_v]
    args += ["-ub", str(plan.ubatch), "-b", str(max(plan.ubatch, 2048))]
    args += ["-t", str(plan.threads)]
    if plan.load_mode != "mmap":
        if has("load_mode"):
            args += ["-lm", plan.load_mode]
        elif plan.load_mode == "none" and has("no_mmap"):
            args.append("--no-mmap")  # older builds: -lm replaced --no-mmap/--mlock
    if plan.cache_ram_bytes is not None and has("cache_ram"):
        args += ["-cram", str(plan.cache_ram_bytes >> 20)]
    return args


def sampling_flags(s: Sampling | None) -> list[str]:
    if s is None:
        return []
    args: list[str] = []
    for flag, value in (
        ("--temp", s.temperature),
        ("--top-p", s.top_p),
        ("--min-p", s.min_p),
        ("--top-k", s.top_k),
        ("--repeat-penalty", s.repeat_penalty),
        ("--presence-penalty", s.presence_penalty),
    ):
        if value is not None:
            args += [flag, _num(value)]
    if s.seed is not None:
        args += ["--seed", str(s.seed)]
    return args


def build_argv(plan: Plan, launch: Launch) -> list[str]:
    argv = [launch.binary, "-m", launch.model_path, *plan_flags(plan, launch.flags), *sampling_flags(launch.sampling)]
    argv.append("--jinja")
    if launch.template_path:
        argv += ["--chat-template-file", launch.template_path]
    if launch.server:
        argv += ["--host", launch.host, "--port", str(launch.port)]
        if launch.log_verbosity is not None and not {"-lv", "--verbosity", "--log-verbosity"} & set(launch.extra):
            argv += ["-lv", str(launch.log_verbosity)]
    argv += list(launch.extra)
    return argv


def launch_for(
    binary: str,
    model_path: str,
    profile: Profile | None,
    *,
    server: ServerOptions | None = None,
    extra: Sequence[str] = (),
    flags: Mapping[str, bool] | None = None,
    gguf_sampling: Sampling | None = None,
) -> Launch:
    """The one way a launch is described, for the CLI, services, the TUI and the demo: the profile's sampling (and
    the GGUF's own general.sampling.* for what it leaves open, or all of them without a profile) and chat template,
    and for llama-server its address and the clients' key (a key file is passed as a file)."""
    template = profile.template_path() if profile else None
    more = list(extra)
    if server is not None and server.api_key_file:
        more += ["--api-key-file", server.api_key_file]
    elif server is not None and server.api_key:
        more += ["--api-key", server.api_key]
    return Launch(
        binary=binary,
        model_path=model_path,
        sampling=to_pass(profile.sampling if profile else None, gguf_sampling),
        template_path=str(template) if template else None,
        server=server is not None,
        host=server.host if server else "127.0.0.1",
        port=server.port if server else 8080,
        extra=tuple(more),
        flags=flags,
    )


def shell_quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
