"""What a llama.cpp binary accepts, read from its `--help` text, and a command checked against it.

Pure: parses text, checks lists; runs nothing (llama/capabilities.py runs the binaries).

Only option lines count: the first non-blank character is `-` and the line is indented less than a description
(llama-server/llama-cli/llama-fit-params start options at column 0, llama-bench at 2; descriptions are indented
40 or more). A flag named inside a description (`use --list-devices …`) is not an option, and a stub whose text
says "the argument has been removed" is not one either. Values are read where the help lists them: `[on|off|auto]`,
`<auto|none|mmap>`, `{none,layer,row}`, a comma list in place of the value (`--spec-type none,draft-mtp,…`),
`- auto:` lines under a `MODE`, and quoted words (`either an exact number, 'auto', or 'all'`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.errors import ExternalToolError

# Flags runq may use, by the name it knows them under -> the spellings to look for in --help.
KNOWN_FLAGS = {
    "load_mode": ("-lm", "--load-mode"),
    "no_mmap": ("--no-mmap",),
    "mlock": ("--mlock",),
    "fit": ("--fit",),
    "fit_target": ("-fitt", "--fit-target"),
    "override_tensor": ("-ot", "--override-tensor"),
    "cpu_moe": ("--cpu-moe",),
    "n_cpu_moe": ("--n-cpu-moe", "-ncmoe"),
    "reasoning_budget": ("--reasoning-budget",),
    "cache_ram": ("-cram", "--cache-ram"),
    "jinja": ("--jinja",),
    "chat_template_file": ("--chat-template-file",),
    "log_jsonl": ("--log-jsonl",),
    "log_verbosity": ("-lv", "--verbosity"),
    "tensor_split": ("-ts", "--tensor-split"),
    "rpc": ("--rpc",),
    "flash_attn": ("-fa", "--flash-attn"),
    "api_key_file": ("--api-key-file",),
    "alias": ("-a", "--alias"),
    "parallel": ("-np", "--parallel"),
    "kv_unified": ("-kvu", "--kv-unified"),
    "spec_type": ("--spec-type",),
    "moe_cache": ("--moe-cache-mib",),
    "lazy_mode": ("-lzm", "--lazy-mode"),
    "depth": ("-d", "--n-depth"),
}
DESCRIPTION_INDENT = 8  # an option line starts before this column; its description continues at 40+
REMOVED = "has been removed"
_SPELLING_RE = re.compile(r"^--?[A-Za-z][\w-]*$")
_HEAD_RE = re.compile(r"^(?P<head>.*?[^,\s])\s{2,}(?P<desc>\S.*)$")  # spellings+hint, then 2+ spaces, description
_LISTED_RE = re.compile(r"[\[<{]([^\]>}]*)[\]>}]")
_MODE_LINE_RE = re.compile(r"^\s+- ([\w+.-]+):")
_QUOTED_RE = re.compile(r"'([\w+.-]+)'")


@dataclass(frozen=True)
class Option:
    spellings: tuple[str, ...]  # "-ngl", "--gpu-layers", "--n-gpu-layers"
    hint: str  # the value as the help writes it: "N", "[on|off|auto]", "MODE", "" for a switch
    values: tuple[str, ...] = ()  # the values it lists, where it lists them
    removed: bool = False  # a stub saying the argument has been removed


@dataclass(frozen=True)
class Help:
    """One binary's options, as its `--help` lists them."""

    tool: str  # "llama-server", …
    options: tuple[Option, ...]

    def option(self, spelling: str) -> Option | None:
        """The live option with this spelling (a removed stub is not one)."""
        for o in self.options:
            if spelling in o.spellings and not o.removed:
                return o
        return None

    def accepts(self, spelling: str) -> bool:
        return self.option(spelling) is not None

    def takes(self, spelling: str, value: str) -> bool:
        """Whether the option takes this value: yes where the help lists no values for it, a number where it
        takes one (`-ngl N`, 'auto' or 'all'), each item of a comma list (`--spec-type`)."""
        o = self.option(spelling)
        if o is None:
            return False
        if not o.values or (o.hint == "N" and value.lstrip("-").isdigit()):
            return True
        return all(v in o.values for v in value.split(","))

    def takes_value(self, spelling: str) -> bool:
        """False for a bare switch (older builds' `-fa`), True for an option with a value."""
        o = self.option(spelling)
        return o is not None and bool(o.hint)

    def flags(self) -> dict[str, bool]:
        """{known flag name: accepted?} (the manifest's `capabilities.flags`)."""
        return {name: any(self.accepts(s) for s in spellings) for name, spellings in KNOWN_FLAGS.items()}


def _values(hint: str, desc: str) -> tuple[str, ...]:
    listed = _LISTED_RE.search(hint)
    if listed and re.search(r"[|,]", listed.group(1)):  # [on|off], <0|1>, {none,layer}; not <n> or <0...N>
        return tuple(v for v in re.split(r"[|,]", listed.group(1)) if v and " " not in v)
    if re.fullmatch(r"[a-z0-9+-]+(,[a-z0-9+-]+)+", hint):  # --spec-type none,draft-simple,…
        return tuple(hint.split(","))
    quoted = _QUOTED_RE.findall(desc) if hint in ("N", "") else []
    return tuple(quoted)


def parse_options(text: str, tool: str = "llama-server") -> Help:
    """Every option line of a `--help` text, with the description lines that follow it."""
    found: list[tuple[list[str], str, list[str]]] = []  # (spellings, hint, description lines)
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("-") and indent < DESCRIPTION_INDENT:
            m = _HEAD_RE.match(stripped)
            head, desc = (m.group("head"), m.group("desc")) if m else (stripped, "")
            tokens = [t for t in re.split(r",?\s+", head) if t]
            spellings = []
            for t in tokens:
                if not _SPELLING_RE.match(t):
                    break
                spellings.append(t)
            if not spellings:
                continue  # a separator like "----- common params -----"
            hint = " ".join(tokens[len(spellings) :])
            found.append((spellings, hint, [desc] if desc else []))
        elif found and stripped and indent >= DESCRIPTION_INDENT:
            found[-1][2].append(line)
    options = []
    for spellings, hint, desc in found:
        text_desc = " ".join(d.strip() for d in desc)
        values = _values(hint, text_desc)
        modes = tuple(m.group(1) for d in desc if (m := _MODE_LINE_RE.match(d)))
        options.append(Option(tuple(spellings), hint, values or modes, REMOVED in text_desc))
    return Help(tool, tuple(options))


def parse_help(text: str) -> dict[str, bool]:
    """{known flag name: accepted?} from a `--help` text (option lines only; removed stubs are absent)."""
    return parse_options(text).flags()


def flags_in(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """(flag, the token after it) for every flag-looking token of a command (its binary left out)."""
    out = []
    for i, tok in enumerate(argv):
        if _SPELLING_RE.match(tok):
            out.append((tok, argv[i + 1] if i + 1 < len(argv) else None))
    return out


# Values runq passes to these options: checked against the help's list where it has one.
_VALUED = frozenset({"-fa", "--flash-attn", "-lm", "--load-mode", "--fit", "--spec-type", "-lzm", "--lazy-mode"})


def check_argv(args: Sequence[str], h: Help | None, where: str) -> None:
    """Raise ExternalToolError naming the first flag (or value) of `args` (runq's own part of a command, the binary
    left out) that this build's `--help` does not list. `h` None: nothing known, nothing checked."""
    if h is None:
        return
    for flag, value in flags_in(args):
        if not h.accepts(flag):
            stub = any(flag in o.spellings for o in h.options)
            why = "says it has been removed" if stub else "does not list it"
            raise ExternalToolError(
                f"this llama.cpp ({where}) has no {flag}: its {h.tool} --help {why}",
                hint=f"use runq's pinned build (`runq build`), or a llama.cpp whose {h.tool} accepts {flag}",
            )
        if flag in _VALUED and value is not None and not (h.takes_value(flag) and h.takes(flag, value)):
            o = h.option(flag)
            listed = f"lists {', '.join(o.values)}" if o and o.values else "has it as a switch, without a value"
            raise ExternalToolError(
                f"this llama.cpp ({where}) does not take {flag} {value}: its {h.tool} --help {listed}",
                hint="use runq's pinned build (`runq build`), or pin the value yourself after --",
            )
