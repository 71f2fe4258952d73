"""A llama-server router's model presets (`--models-preset FILE`): one INI section per model, made from the very
llama-server command `runq run MODEL --server` runs, and the router's own command.

Pure: argv lists and help text in, INI text and argv out. The rules are llama.cpp's own (common/preset.cpp at the
pinned commit, verified against the router): a section's key is a flag without its dashes (every spelling works);
a value ends at the first `;` or `#` and has no quoting, so runq refuses such values instead of letting the
router cut them; a repeated key keeps the last, so runq's repeated `-ot` becomes one comma-joined line (llama.cpp
splits an `-ot` value on commas on the command line too, so both read alike); a flag without a value is
`key = true`. The router's own command line overrides every section, so it carries nothing model-specific; the
router gives each child its own --host, --port and --alias (the section's name), so a section has none of those.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from launcher.errors import UsageError

# Flags the router sets for each child itself (or must not pass on): never in a section.
ROUTER_OWNED = frozenset({"--host", "--port", "--api-key", "--api-key-file", "-a", "--alias"})
JOINED = frozenset({"-ot", "--override-tensor"})  # repeated on runq's command line, one comma-joined value in a preset
SECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_FLAG = re.compile(r"-{1,2}[A-Za-z][\w-]*")
_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]*")  # preset.cpp's key grammar
DEFAULT_STOP_TIMEOUT_S = 30  # the router's default is 10 s before SIGKILL; a big model may need longer to unload


@dataclass(frozen=True)
class Section:
    """One model in the router: its API id (the section's name) and its options, in command-line order."""

    name: str
    options: tuple[tuple[str, str], ...]  # (key, value); "true" for a flag without a value


def model_id(text: str) -> str:
    """A section name the router keeps as written and clients can type: [A-Za-z0-9._-], no ':' (the router would
    rewrite a `name:TAG`)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return clean[:80] or "model"


def unique_ids(names: Iterable[str]) -> list[str]:
    """model_id() of each name, with -2, -3… added where two would be the same."""
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        base = model_id(name)
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def is_flag(token: str) -> bool:
    """A llama.cpp flag, not a value: `-c`, `--jinja`; not `-1` or `-0.5`."""
    return bool(_FLAG.fullmatch(token))


def pairs(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(flag, value) in order from a llama-server argv without the binary; value "" for a flag without one."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not is_flag(flag):
            raise UsageError(f"{flag!r} in a llama-server command is not a flag", hint="this is a bug in runq")
        has_value = i + 1 < len(argv) and not is_flag(argv[i + 1])
        out.append((flag, argv[i + 1] if has_value else ""))
        i += 2 if has_value else 1
    return out


def check_value(model: str, flag: str, value: str) -> None:
    """A value the preset format can hold exactly: no `;` or `#` (a comment starts there), no line break, no
    blanks at either end (they are dropped)."""
    bad = next((c for c in (";", "#", "\n", "\r") if c in value), None)
    if bad is not None or value != value.strip():
        what = f"holds {bad!r}" if bad else "starts or ends with a blank"
        raise UsageError(
            f"{model}: the value of {flag} ({value[:60]!r}) {what}, which a llama-server preset cannot hold",
            hint="rename the file or pattern without it, or serve this model alone with `runq run MODEL --server`",
        )


def section_of(name: str, argv: Sequence[str], *, log_file: str | None = None) -> Section:
    """The preset section for one model from its llama-server argv (binary first, as pipeline.command renders
    it): the router-owned flags dropped, every `-ot` joined into one value, the model's own log file added."""
    if not SECTION_ID.fullmatch(name):
        raise UsageError(f"{name!r} is not a model id the router keeps as written", hint="use [A-Za-z0-9._-]")
    options: dict[str, str] = {}
    for flag, value in pairs(argv[1:]):
        if flag in ROUTER_OWNED:
            continue
        key = flag.lstrip("-")
        joined = f"{options[key]},{value}" if flag in JOINED and key in options else value
        check_value(name, flag, joined)
        options[key] = joined or "true"  # a repeated flag: the last wins, as on the command line
    if log_file is not None:
        check_value(name, "--log-file", log_file)
        options["log-file"] = log_file
    return Section(name, tuple(options.items()))


def render_ini(sections: Sequence[Section], *, comment: str, stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S) -> str:
    """The preset file: a comment, the defaults for every model (`[*]`), then one section per model."""
    lines = [f"; {line}" if line else ";" for line in comment.splitlines()]
    lines += ["version = 1", "", "[*]", f"stop-timeout = {stop_timeout_s}"]
    for s in sections:
        lines += ["", f"[{s.name}]", *(f"{k} = {v}" for k, v in s.options)]
    return "\n".join(lines) + "\n"


def router_argv(binary: str, preset: str, *, models_max: int, host: str, port: int, api_key_file: str | None = None,
                api_key: str | None = None) -> list[str]:  # fmt: skip
    """The router's own command: only router flags (anything else would override every model's section)."""
    argv = [binary, "--models-preset", preset, "--models-max", str(models_max), "--host", host, "--port", str(port)]
    if api_key_file:
        return [*argv, "--api-key-file", api_key_file]
    return [*argv, "--api-key", api_key] if api_key else argv


# --- what the router made of a section -------------------------------------------------------------------------


def parse_options(help_text: str) -> dict[str, str]:
    """{every spelling of a llama-server option: its canonical spelling (the last one, as the router writes it)}
    from `llama-server --help` (lines like `-c,    --ctx-size N`, `--temp, --temperature N`)."""
    table: dict[str, str] = {}
    for line in help_text.splitlines():
        if not line.startswith("-"):
            continue
        spec = re.split(r"\s{2,}", re.sub(r",\s+", ", ", line), maxsplit=1)[0]  # spellings, then the text
        names = [w.split()[0] for w in re.split(r",\s*", spec) if w.strip().startswith("-")]
        names = [n for n in names if is_flag(n)]
        positive = [n for n in names if not n.startswith("--no-")]  # `--jinja, --no-jinja`: two meanings
        for n in names:
            table.setdefault(n, n if n.startswith("--no-") or not positive else positive[-1])
    return table


def unknown_keys(sections: Sequence[Section], options: Mapping[str, str]) -> list[str]:
    """Keys no option of this llama-server has (the router would refuse to start): `section: key`."""
    known = {k.lstrip("-") for k in options} | {"log-file", "stop-timeout", "load-on-startup"}
    return [f"{s.name}: {k}" for s in sections for k, _ in s.options if k not in known or not _KEY.fullmatch(k)]


def canonical(argv: Sequence[str], options: Mapping[str, str]) -> Counter[tuple[str, str]]:
    """A llama-server argv (without the binary) as a multiset of (canonical flag, value), router-owned flags and
    --log-file left out, `-ot`s joined: two commands that llama.cpp reads alike compare equal."""
    seen: dict[str, str] = {}
    for flag, value in pairs(argv):
        name = options.get(flag, flag)
        if name in {options.get(f, f) for f in ROUTER_OWNED} or name == "--log-file":
            continue
        joined = name == options.get("-ot", "--override-tensor") and name in seen
        seen[name] = f"{seen[name]},{value}" if joined else value
    return Counter(seen.items())


def differences(planned: Sequence[str], router: Sequence[str], options: Mapping[str, str]) -> list[str]:
    """What the router's command for a model has that the plan's does not, and the other way round."""
    a, b = canonical(planned, options), canonical(router, options)
    missing = [f"{k} {v}".strip() for k, v in sorted((a - b).elements())]
    extra = [f"{k} {v}".strip() for k, v in sorted((b - a).elements())]
    return [f"planned but not passed: {x}" for x in missing] + [f"passed but not planned: {x}" for x in extra]


def router_problems(listed: Mapping[str, Sequence[str]], planned: Mapping[str, Sequence[str]],
                    options: Mapping[str, str]) -> list[str]:  # fmt: skip
    """How a router's models (id -> its argv, from /models) differ from the planned ones (id -> argv)."""
    if set(listed) != set(planned):
        return [
            f"the router lists {', '.join(sorted(listed)) or 'no model'}; runq planned {', '.join(sorted(planned))}"
        ]
    return [f"{i}: {d}" for i, argv in planned.items() for d in differences(argv[1:], listed[i][1:], options)]
