"""A Plan as llama.cpp command lines: llama-server / llama-cli, llama-bench and llama-fit-params.

Pure: builds argv lists, runs nothing. The only writer of llama.cpp flags in runq (one place per dialect).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from launcher.catalog.profiles import Profile, Sampling
from launcher.catalog.sampling import to_pass
from launcher.llama.options import Help, check_argv
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
    alias: str | None = None  # the model id OpenAI clients see (llama-server's default is the file's path)
    subcommand: str | None = None  # a multi-call `llama`: "serve" / "cli"
    help: Help | None = None  # the binary's --help: runq's part of the command is checked against it
    where: str = "the pinned build"  # how an error names the build


def _num(x: float) -> str:
    return f"{x:g}"


Dialect = Literal["server", "bench", "fit"]
FIT_TARGET_MIB = 1024  # llama.cpp's own -fitt default (llama-server); llama-bench's fit is off unless asked


def placement_flags(plan: Plan, dialect: Dialect = "server", flags: Mapping[str, bool] | None = None) -> list[str]:
    """What the planner decided, as llama.cpp flags: the one writer of them, in three dialects.

    server: llama-server / llama-cli (`-ot A=B -ot C=D`, `-ts 1,2`); bench: llama-bench (pairs inside one -ot joined
    by ';', a ',' would start another configuration; `-ts 1/2`; no -c: the test sets the tokens); fit:
    llama-fit-params (the server's flags less its server-only ones). `flags` are what the binary accepts
    (capabilities.parse_help; None: the pinned commit's). A plan that leaves placement to llama.cpp
    (`llama_default`, measured fastest by tune) says only what the user's turn needs: the context."""

    def has(name: str) -> bool:
        return flags is None or flags.get(name, False)

    args: list[str] = []
    if plan.rpc and dialect != "bench":  # first: llama.cpp registers the workers' devices when it reads --rpc
        args += ["--rpc", ",".join(plan.rpc)]
    if dialect != "bench":
        args += ["-c", str(plan.ctx)]
    # -np/-kvu/-lzm: a build manifest written before runq looked for them lacks them (runq's builds have them)
    serving = _serving(plan, dialect, lambda name: flags is None or flags.get(name, True))
    if plan.llama_default:
        return args + _fa(plan, dialect) + serving + _speed(plan, dialect)
    args += ["-ngl", str(plan.ngl)]
    if dialect != "bench" and has("fit"):  # on by default since late 2025: off, so llama.cpp keeps runq's placement
        args += ["--fit", "off"]
    args += _devices(plan, dialect)
    if plan.cache_type_k != "f16":
        args += ["-ctk", plan.cache_type_k]
    if plan.cache_type_v != "f16":
        args += ["-ctv", plan.cache_type_v]
    args += ["-ub", str(plan.ubatch), "-b", str(max(plan.ubatch, 2048)), "-t", str(plan.threads)]
    return args + _fa(plan, dialect) + _memory(plan, dialect, has) + serving + _speed(plan, dialect)


def _serving(plan: Plan, dialect: Dialect, has: Callable[[str], bool]) -> list[str]:
    """The server that really runs (plan/serving.py): its slots, and the lookup tables it reads on demand.
    llama-server / llama-cli get -np (llama-server's own default is 4 slots), and -kvu for more than one so each
    may use the whole context; llama-fit-params projects one slot (its default: it has no -kvu, runq adds the
    difference), llama-bench has neither. -lzm goes to all three: the tables' residence follows it."""
    args: list[str] = []
    if dialect == "server" and has("parallel"):
        args += ["-np", str(plan.slots)] + (["-kvu"] if plan.kv_unified and has("kv_unified") else [])
    if plan.lazy_mode is not None and has("lazy_mode"):
        args += ["-lzm", plan.lazy_mode]
    return args


def _speed(plan: Plan, dialect: Dialect) -> list[str]:
    """What runs beside the placement, only where a measurement chose it (tune): MTP drafting, a GPU expert
    cache. llama-server / llama-cli only (llama-bench has no speculative decoding; fit-params cannot count it)."""
    if dialect != "server":
        return []
    args: list[str] = []
    if plan.spec_type != "none":
        args += ["--spec-type", plan.spec_type]
    if plan.moe_cache_mib:
        args += ["--moe-cache-mib", str(plan.moe_cache_mib)]
    return args


def _devices(plan: Plan, dialect: Dialect) -> list[str]:
    """-ot (the user's first, then runq's) and -ts."""
    args: list[str] = []
    if dialect == "bench":
        if plan.overrides:
            args += ["-ot", ";".join(str(o) for o in plan.overrides)]
    else:
        for o in plan.overrides:
            args += ["-ot", str(o)]
    if plan.tensor_split:
        args += ["-ts", ("/" if dialect == "bench" else ",").join(str(n) for n in plan.tensor_split)]
    return args


def _memory(plan: Plan, dialect: Dialect, has: Callable[[str], bool]) -> list[str]:
    """Load mode and the server's host prompt cache."""
    if dialect == "bench":
        return ["-lm", plan.load_mode]
    args: list[str] = []
    if plan.load_mode != "mmap":
        if has("load_mode"):
            args += ["-lm", plan.load_mode]
        elif plan.load_mode == "none" and has("no_mmap"):
            args.append("--no-mmap")  # older builds: -lm replaced --no-mmap/--mlock
    if dialect == "server" and plan.cache_ram_bytes is not None and has("cache_ram"):
        args += ["-cram", str(plan.cache_ram_bytes >> 20)]
    return args


def _fa(plan: Plan, dialect: Dialect) -> list[str]:
    """Flash attention: llama.cpp's auto unless a measurement chose; llama-bench's own default is off, so it is
    always told."""
    if dialect == "bench":
        return ["-fa", "auto" if plan.flash_attn == "auto" else plan.flash_attn]
    return ["-fa", plan.flash_attn] if plan.flash_attn != "auto" else []


def plan_flags(plan: Plan, flags: Mapping[str, bool] | None = None) -> list[str]:
    """The placement part of a llama-server / llama-cli command."""
    return placement_flags(plan, "server", flags)


def fit_argv(binary: str, model: str, plan: Plan, *, placement: bool = True) -> list[str]:
    """llama-fit-params for exactly this plan's flags (`-fitp on`: the projected MiB per device);
    placement=False leaves out -ot, -ts and --rpc (a CPU build puts everything on the host anyway)."""
    flags = placement_flags(plan, "fit")
    if not placement:
        flags = _without(flags, {"-ot", "-ts", "--rpc"})
    return [binary, "-m", model, *flags, "-fitp", "on"]


def fit_flags(plan: Plan, *, placement: bool = True) -> list[str]:
    """The flags part of fit_argv (what identifies one projection)."""
    return fit_argv("", "", plan, placement=placement)[3:-2]


def fit_default_argv(
    binary: Sequence[str], model: str, plan: Plan, margins_mib: Sequence[int], *, llama_batch: bool = False
) -> list[str]:
    """llama-fit-params asked for the placement ITS fit would choose (no -fitp): the plan's context, KV types,
    flash attention and workers, and its ubatch unless `llama_batch` (llama.cpp's own default, for the baseline);
    no -ngl, -ot or -ts (fit gives up when they are set); `-fitt` the margin to keep per device, in llama.cpp's
    device order."""
    args = ["--rpc", ",".join(plan.rpc)] if plan.rpc else []
    args += ["-c", str(plan.ctx)]
    if not llama_batch:
        args += ["-ub", str(plan.ubatch), "-b", str(max(plan.ubatch, 2048))]
    if plan.cache_type_k != "f16":
        args += ["-ctk", plan.cache_type_k]
    if plan.cache_type_v != "f16":
        args += ["-ctv", plan.cache_type_v]
    args += _fa(plan, "fit")
    return [*binary, "-m", model, *args, "-fitt", ",".join(str(max(0, m)) for m in margins_mib)]


def fit_answer_argv(binary: Sequence[str], model: str, plan: Plan, placement: Sequence[str]) -> list[str]:
    """llama-fit-params projecting (`-fitp on`) another placement (fit's own answer, server syntax) with this plan's
    context, ubatch, KV types and flash attention: llama.cpp's sizes for devices runq's plan left empty."""
    args = ["--rpc", ",".join(plan.rpc)] if plan.rpc else []
    args += ["-c", str(plan.ctx), *placement, "--fit", "off"]
    args += ["-ub", str(plan.ubatch), "-b", str(max(plan.ubatch, 2048))]
    if plan.cache_type_k != "f16":
        args += ["-ctk", plan.cache_type_k]
    if plan.cache_type_v != "f16":
        args += ["-ctv", plan.cache_type_v]
    return [*binary, "-m", model, *args, *_fa(plan, "fit"), "-fitp", "on"]


def _without(flags: list[str], drop: set[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(flags):
        if flags[i] in drop:
            i += 2
            continue
        out.append(flags[i])
        i += 1
    return out


def bench_argv(
    bench: str | Sequence[str], model: str, plan: Plan | None, *, pp: int, tg: int, reps: int, depth: int = 0,
    gpus: bool = False, fit_target_mib: int = FIT_TARGET_MIB, baseline_flags: Sequence[str] | None = None,
    empty_too: bool = False,
) -> list[str]:  # fmt: skip
    """The llama-bench command for a plan (None, or one that leaves placement to llama.cpp: llama.cpp's own
    default: `baseline_flags`, its fit's answer at the user's context, or else llama-bench's own fit where there
    are GPUs). The prompt is at least one ubatch long, so a larger ubatch is really exercised; `depth` tokens of
    context are filled before each test (-d), and with `empty_too` each test runs on an empty cache as well
    (`-d 0,N`). `bench`: the binary, or a multi-call `llama bench`."""
    baseline = plan is None or plan.llama_default
    prompt = pp if baseline or plan is None else max(pp, plan.ubatch)
    head = [bench] if isinstance(bench, str) else list(bench)
    argv = [*head, "-m", model, "-p", str(prompt), "-n", str(tg), "-r", str(reps), "-o", "jsonl"]
    if depth:
        argv += ["-d", f"0,{depth}" if empty_too else str(depth)]
    if baseline:
        if baseline_flags is not None:
            return argv + list(baseline_flags)
        return argv + (["-fitt", str(fit_target_mib)] if gpus else [])
    assert plan is not None
    return argv + placement_flags(replace(plan, ngl=plan.ngl if plan.gpu_devices else 0), "bench")


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
    """The command; runq's part of it (not the user's own flags after `--`) checked against the binary's --help
    when it is known: a flag or value this build does not list is an error naming it."""
    ours = ["-m", launch.model_path, *plan_flags(plan, launch.flags), *sampling_flags(launch.sampling)]
    if launch.flags is None or launch.flags.get("jinja", False):
        ours.append("--jinja")
    if launch.template_path:
        ours += ["--chat-template-file", launch.template_path]
    if launch.server:
        ours += ["--host", launch.host, "--port", str(launch.port)]
        # Every llama-server since 2023 has --alias; a manifest written before runq looked for it lacks the name.
        wants_alias = launch.alias and not {"-a", "--alias"} & set(launch.extra)
        if wants_alias and (launch.flags is None or launch.flags.get("alias", True)):
            ours += ["--alias", str(launch.alias)]
        quiet = launch.flags is not None and not launch.flags.get("log_verbosity", False)
        if (
            launch.log_verbosity is not None
            and not quiet
            and not {"-lv", "--verbosity", "--log-verbosity"} & set(launch.extra)
        ):
            ours += ["-lv", str(launch.log_verbosity)]
    check_argv(ours, launch.help, launch.where)
    head = [launch.binary, *([launch.subcommand] if launch.subcommand else [])]
    return [*head, *ours, *launch.extra]


def launch_for(
    binary: str | Sequence[str],
    model_path: str,
    profile: Profile | None,
    *,
    server: ServerOptions | None = None,
    extra: Sequence[str] = (),
    flags: Mapping[str, bool] | None = None,
    gguf_sampling: Sampling | None = None,
    help: Help | None = None,  # the binary's --help
    where: str = "the pinned build",
) -> Launch:
    """The one way a launch is described, for the CLI, services, the TUI and the demo: the profile's sampling (and
    the GGUF's own general.sampling.* for what it leaves open, or all of them without a profile) and chat template,
    and for llama-server its address and the clients' key (a key file is passed as a file). `binary`: a path, or
    a multi-call `llama` with its subcommand ([path, "serve"])."""
    template = profile.template_path() if profile else None
    more = list(extra)
    if server is not None and server.api_key_file:
        more += ["--api-key-file", server.api_key_file]
    elif server is not None and server.api_key:
        more += ["--api-key", server.api_key]
    head = [binary] if isinstance(binary, str) else list(binary)
    return Launch(
        binary=head[0],
        subcommand=head[1] if len(head) > 1 else None,
        help=help,
        where=where,
        model_path=model_path,
        sampling=to_pass(profile.sampling if profile else None, gguf_sampling),
        template_path=str(template) if template else None,
        server=server is not None,
        host=server.host if server else "127.0.0.1",
        port=server.port if server else 8080,
        extra=tuple(more),
        flags=flags,
        alias=model_alias(profile, model_path),
    )


_SHARD_SUFFIX_RE = re.compile(r"-\d{5}-of-\d{5}$")


def model_alias(profile: Profile | None, model_path: str) -> str:
    """The model's name for API clients: the catalog name (`deepseek-v3.1`), else the file's name without
    `.gguf` and its shard number (`Tiny-MoE-Q8_0`)."""
    if profile is not None:
        return profile.name
    stem = model_path.rsplit("/", 1)[-1].removesuffix(".gguf")
    return _SHARD_SUFFIX_RE.sub("", stem)


def shell_quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
