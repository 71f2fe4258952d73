"""What the user asked for, checked once: the planning request and the server options, from any front end.

Pure: no I/O. The CLI (its flags, and llama.cpp flags after `--`) and the TUI (its boxes) turn what was typed
into these values; every bad value is a UsageError that names the flag and says what would do, whichever command
it came through. Nothing here changes a value silently.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from launcher.errors import UsageError
from launcher.plan import serving
from launcher.plan.kv_cache import KV_TYPE_BYTES
from launcher.plan.overrides import Override, parse_user_overrides
from launcher.plan.types import LazyMode, Request

LAZY_MODES = ("on", "auto", "off")

if TYPE_CHECKING:
    from launcher.machine.spec import Machine, Worker

MIN_CTX = 256
MAX_CTX = 1 << 26  # 67M tokens: more than any model's training context
MAX_UBATCH = 1 << 16
MAX_NGL = 10_000
MAX_THREADS = 4096
MAX_TIMEOUT_S = 7 * 24 * 3600

# llama.cpp flags after `--` that pin part of the plan: (flags, PlanInputs field); checked like runq's own flags and
# planned around (the command carries the checked value once).
PIN_FLAGS = {
    ("-c", "--ctx-size"): "ctx",
    ("-ngl", "--gpu-layers", "--n-gpu-layers"): "ngl",
    ("-ub", "--ubatch-size"): "ubatch",
    ("-ctk", "--cache-type-k"): "cache_type_k",
    ("-ctv", "--cache-type-v"): "cache_type_v",
    ("-t", "--threads"): "threads",
    ("-ot", "--override-tensor"): "ot",
    ("-np", "--parallel"): "parallel",
    ("-lzm", "--lazy-mode"): "lazy_mode",
}
# llama.cpp flags after `--` that runq sets itself, from its own checked flags or from the plan: refused, with the
# flag to use instead. llama.cpp takes the last of a repeated flag, so `-- --host 0.0.0.0` would otherwise win over
# the --host whose API-key rule runq checked. The rest (sampling, -lv, -fa, --alias, …) is passed through: the
# user's wins.
OWNED_FLAGS = {
    ("--host",): "use runq's own --host (off this machine it needs --api-key-file FILE, or --insecure)",
    ("--port",): "use runq's own --port N (runq waits for the server on it)",
    ("--api-key", "--api-key-file"): "use runq's own --api-key-file FILE (or --api-key KEY)",
    ("-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-dr", "--docker-repo"):
        "the model is runq's MODEL argument (a name or a .gguf file; --quant picks the quant)",
    ("-b", "--batch-size"): "runq sets -b from the ubatch: pin --ubatch N",
    ("-fit", "--fit", "-fitt", "--fit-target", "-fitc", "--fit-ctx"):
        "runq places every tensor itself (--fit off); `runq tune` measures llama.cpp's own fit against runq's plan",
    ("-lm", "--load-mode", "--mmap", "--no-mmap", "--mlock"):
        "runq chooses the load mode with the plan; `runq tune` measures mmap against none",
    ("-cram", "--cache-ram"): "runq sizes llama-server's prompt cache from the RAM the plan leaves free",
    ("-ts", "--tensor-split"): "runq splits the layers between GPUs itself; pin tensors with --ot PATTERN=CUDAi",
    ("--rpc",): "use runq's own --rpc HOST:PORT (the plan places layers on the workers)",
    ("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"):
        "runq's slots share one KV cache (each may use the whole context): choose how many with --parallel N",
    ("--jinja", "--no-jinja", "--chat-template", "--chat-template-file"):
        "runq passes the model profile's chat template (a profile in ~/.config/runq/profiles/ can name another)",
}  # fmt: skip


def llama_flag(arg: str) -> str:
    """A flag as llama.cpp reads it: in a `--long-name`, '_' is '-' (so `--api_key` is `--api-key`)."""
    return arg.replace("_", "-") if arg.startswith("--") else arg


@dataclass(frozen=True)
class PlanInputs:
    """The parts of a plan the user pinned (None: the planner chooses), as typed, not yet checked."""

    ctx: int | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    ubatch: int | None = None
    ngl: int | None = None
    ot: tuple[str, ...] = ()  # PATTERN=BUF, each maybe a comma-separated list
    threads: int | None = None
    server: bool = True
    parallel: int | None = None  # llama-server slots (None: serving.DEFAULT_SLOTS)
    lazy_mode: str | None = None  # -lzm pinned after `--` (None: runq's rule)
    flag_names: dict[str, str] = field(default_factory=dict)  # field -> the flag it came from, for messages

    def pinned(self, pins: dict[str, Any]) -> PlanInputs:
        """These inputs with llama.cpp's own flags after `--` on top (they win; -ot adds)."""
        changes = {k: v for k, v in pins.items() if k != "ot"}
        names = {**self.flag_names, **{f: f"{flags[0]} (after --)" for flags, f in PIN_FLAGS.items() if f in pins}}
        return replace(self, **changes, ot=(*self.ot, *pins.get("ot", ())), flag_names=names)

    def flag(self, name: str, default: str) -> str:
        return self.flag_names.get(name, default)


def split_extra(extra: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Pins the plan must respect (PlanInputs field -> value), and the flags to pass through unchanged."""
    pins: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(extra):
        flag = llama_flag(extra[i])
        hint = next((h for names, h in OWNED_FLAGS.items() if flag in names), None)
        if hint is not None:
            raise UsageError(
                f"{extra[i]} after --: runq sets it itself (llama.cpp would take the last of the two)", hint=hint
            )
        field_name = next((f for names, f in PIN_FLAGS.items() if flag in names), None)
        if field_name is None:
            rest.append(extra[i])
            i += 1
            continue
        if i + 1 >= len(extra):
            raise UsageError(f"{flag} after -- needs a value", hint=f"e.g. -- {flag} VALUE, or leave {flag} out")
        value = extra[i + 1]
        if field_name == "ot":
            pins.setdefault("ot", []).append(value)
        elif field_name in ("cache_type_k", "cache_type_v", "lazy_mode"):
            pins[field_name] = value
        else:
            pins[field_name] = _int_pin(flag, field_name, value)
        i += 2
    return pins, rest


def _int_pin(flag: str, field_name: str, value: str) -> int:
    if field_name == "ngl" and value in ("all", "auto"):
        raise UsageError(f"-ngl {value}: give a number so runq can plan around it",
                         hint="e.g. -ngl 99 (every layer), or leave -ngl out and let runq choose")  # fmt: skip
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected a whole number", hint=f"e.g. {flag} 8192") from None


def check_int(value: int | None, flag: str, lo: int, hi: int, hint: str) -> None:
    if value is not None and not lo <= value <= hi:
        raise UsageError(f"{flag} {value}: must be between {lo:,} and {hi:,}", hint=hint)


def check_ctx(ctx: int | None, flag: str = "--ctx") -> None:
    if ctx is not None and ctx < MIN_CTX:
        raise UsageError(f"{flag} {ctx}: too small to chat with (the least is {MIN_CTX})", hint="use 2048 or more")
    check_int(ctx, flag, MIN_CTX, MAX_CTX, "leave it out to use the model's default context")


def check_kv_type(value: str, flag: str) -> None:
    if value not in KV_TYPE_BYTES:
        raise UsageError(f"{flag} {value!r} is not a KV cache type", hint="one of: " + ", ".join(KV_TYPE_BYTES))


def gpu_buffers(n_gpus: int, workers: Sequence[Worker] = ()) -> tuple[str, ...]:
    """The llama.cpp buffer names a machine with n GPUs (and these workers) has, for `-ot PATTERN=BUF`."""
    remote = (f"RPC{d.index}[{w.endpoint}]" for w in workers for d in w.devices)
    return ("CPU", *(f"CUDA{i}" for i in range(n_gpus)), *remote)


def buffers_of(machine: Machine) -> tuple[str, ...]:
    """The buffer names of a (probed or described) machine and its workers."""
    return gpu_buffers(len(machine.gpus), machine.workers)


def planning_request(inputs: PlanInputs, *, default_ctx: int, buffers: Sequence[str]) -> Request:
    """The planner's Request, every value checked; `buffers` are the ones the planned machine has."""
    check_ctx(inputs.ctx, inputs.flag("ctx", "--ctx"))
    check_kv_type(inputs.cache_type_k, inputs.flag("cache_type_k", "--cache-type-k"))
    check_kv_type(inputs.cache_type_v, inputs.flag("cache_type_v", "--cache-type-v"))
    check_int(inputs.ubatch, inputs.flag("ubatch", "--ubatch"), 1, MAX_UBATCH, "e.g. 512 or 2048; or leave it out")
    check_int(inputs.ngl, inputs.flag("ngl", "--ngl"), 0, MAX_NGL, "layers on the GPU: 0 or more; or leave it out")
    check_int(inputs.threads, inputs.flag("threads", "--threads"), 1, MAX_THREADS,
              "leave it out to use the physical cores")  # fmt: skip
    user: tuple[Override, ...] = parse_user_overrides(inputs.ot, buffers)
    slots, lazy = check_serving(inputs)
    return Request(
        ctx=inputs.ctx or default_ctx,
        cache_type_k=inputs.cache_type_k,
        cache_type_v=inputs.cache_type_v,
        ubatch=inputs.ubatch,
        ngl=inputs.ngl,
        user_overrides=user,
        server=inputs.server,
        threads=inputs.threads,
        slots=slots,
        lazy_mode=lazy,
    )


def check_serving(inputs: PlanInputs) -> tuple[int, LazyMode | None]:
    """The slot count (--parallel N, or -np after --) and a pinned -lzm, checked."""
    flag = inputs.flag("parallel", "--parallel")
    check_int(inputs.parallel, flag, 1, serving.MAX_SLOTS, "e.g. --parallel 4: four requests served at once")
    if not inputs.server and inputs.parallel not in (None, 1):
        raise UsageError(f"{flag} {inputs.parallel}: a chat (llama-cli) is one conversation",
                         hint="serve it with --server to take several requests at once")  # fmt: skip
    if inputs.lazy_mode is not None and inputs.lazy_mode not in LAZY_MODES:
        raise UsageError(f"{inputs.flag('lazy_mode', '-lzm')} {inputs.lazy_mode!r} is not a lazy mode",
                         hint="on, auto or off (llama.cpp's --lazy-mode)")  # fmt: skip
    return inputs.parallel or serving.DEFAULT_SLOTS, cast("LazyMode | None", inputs.lazy_mode)


SLOW_UBATCH = 32  # below this llama.cpp reads the prompt a few tokens per step: many times slower


def advisories(inputs: PlanInputs, cores: int) -> list[str]:
    """Values that are allowed but almost surely not meant, said as warnings (the plan still honours them):
    more threads than the machine's cores, a ubatch of a few tokens. Values out of range are planning_request's."""
    out = []
    if inputs.threads is not None and cores < inputs.threads <= MAX_THREADS:
        out.append(
            f"{inputs.flag('threads', '--threads')} {inputs.threads} is more than the {cores} CPU cores: the extra "
            "threads only compete for them (llama.cpp decodes fastest at about one thread per physical core)"
        )
    if inputs.ubatch is not None and 1 <= inputs.ubatch < SLOW_UBATCH:
        out.append(
            f"{inputs.flag('ubatch', '--ubatch')} {inputs.ubatch}: llama.cpp would read prompts {inputs.ubatch} "
            "tokens at a time, many times slower than at 512 (leave it out and runq chooses)"
        )
    return out


# --- serving ----------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Only this machine can connect (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(port: int, flag: str = "--port") -> None:
    check_int(port, flag, 1, 65535, "a free TCP port, e.g. 8080")


def check_timeout(seconds: float, flag: str = "--timeout") -> None:
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise UsageError(f"{flag} {seconds:g}: must be a number of seconds above 0", hint="e.g. --timeout 900")


def check_exposure(host: str, has_key: bool, insecure: bool, *, key_hint: str) -> None:
    """The one rule for run and service: off loopback, clients must send a key unless --insecure says otherwise."""
    if not host.strip():
        raise UsageError("--host is empty", hint="e.g. --host 127.0.0.1 (this machine) or --host 0.0.0.0 (all)")
    if not is_loopback(host) and not has_key and not insecure:
        raise UsageError(
            f"--host {host} would let anyone on the network use the model",
            hint=f"give {key_hint}, or --insecure if you really mean it",
        )


@dataclass(frozen=True)
class ServerOptions:
    """Where llama-server listens and who may use it (the key itself is read by the edge that needs it)."""

    host: str = "127.0.0.1"
    port: int = 8080
    timeout_s: float = 900
    api_key: str | None = None
    api_key_file: str | None = None
    insecure: bool = False

    def check(self) -> ServerOptions:
        check_port(self.port)
        check_timeout(self.timeout_s)
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("--api-key is empty", hint="give a key, or leave --api-key out")
        check_exposure(self.host, bool(self.api_key or self.api_key_file), self.insecure,
                       key_hint="--api-key-file FILE (mode 0600; clients send the key)")  # fmt: skip
        return self
