"""Whether a GGUF carries its chat template, and which of llama.cpp's built-in formats its vocabulary matches.

Pure: no I/O beyond naming the template files runq ships (templates/). Without `tokenizer.chat_template`,
llama-server falls back to ChatML without a word (common/chat.cpp common_chat_templates_init, 0c1e570), wrong for
most architectures; llama.cpp does not pick a format from the architecture itself (llama_model_chat_template).
Its built-in formats (src/llama-chat.cpp) are reachable by name only with `--no-jinja --chat-template NAME`, which
loses tools and reasoning; with `--jinja` a `--chat-template NAME` is taken as the template's text. So runq ships
a jinja rendering of each built-in it maps (templates/builtin-NAME.jinja, checked against `--no-jinja
--chat-template NAME` on llama-server's /apply-template) and passes it with `--chat-template-file`.
The mapping reads the vocabulary, not the architecture (Kimi-K2 is a deepseek2 model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATE_KEY = "tokenizer.chat_template"
CHATML = "chatml"  # llama-server's own fallback: right for a vocabulary that has its tokens
# llama.cpp built-in format -> tokens the vocabulary must hold, in the order they are tried.
BUILTINS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kimi-k2", ("<|im_user|>", "<|im_middle|>")),
    ("deepseek3", ("<｜User｜>", "<｜Assistant｜>")),
    ("gpt-oss", ("<|start|>", "<|channel|>")),
    ("chatglm4", ("[gMASK]", "<sop>")),
    ("llama4", ("<|header_start|>", "<|header_end|>")),
    (CHATML, ("<|im_start|>", "<|im_end|>")),
)
# Architectures whose own template differs from the built-in their tokens match: said, not passed.
NOT_THE_BUILTIN = {"deepseek4": "deepseek3"}  # DeepSeek-V4's template is not V3's (no built-in at the pin)


@dataclass(frozen=True)
class ChatFormat:
    """What a GGUF header says about its chat template."""

    present: bool  # tokenizer.chat_template is set
    builtin: str | None = None  # the llama.cpp built-in its vocabulary matches (CHATML: the fallback is right)


def chat_format(metadata: Mapping[str, Any]) -> ChatFormat:
    template = metadata.get(TEMPLATE_KEY)
    if isinstance(template, str) and template.strip():
        return ChatFormat(True)
    tokens = metadata.get("tokenizer.ggml.tokens") or ()
    arch = metadata.get("general.architecture")
    for name, needed in BUILTINS:
        if all(t in tokens for t in needed):
            return ChatFormat(False, None if NOT_THE_BUILTIN.get(str(arch)) == name else name)
    return ChatFormat(False)


def builtin_file(name: str) -> Path | None:
    """runq's jinja rendering of a built-in format (None for ChatML: llama-server's own fallback)."""
    from launcher.catalog.profiles import templates_dir

    path = templates_dir() / f"builtin-{name}.jinja"
    return path if name != CHATML and path.is_file() else None


def missing_template_note(fmt: ChatFormat, file: Path | None) -> tuple[str, bool]:
    """What the plan says about a GGUF without a chat template, and whether it is a warning (wrong format)."""
    head = "this GGUF has no chat template (tokenizer.chat_template): llama-server would fall back to ChatML"
    if fmt.builtin == CHATML:
        return f"{head}, which its tokens (<|im_start|>, <|im_end|>) are made for", False
    if file is not None:
        return (f"{head}, wrong for its tokens; runq passes llama.cpp's built-in {fmt.builtin!r} format as a jinja "
                f"file ({file.name}: --jinja keeps tools and reasoning)", True)  # fmt: skip
    return (f"{head}, and no built-in format of llama.cpp matches its tokens: replies may be garbled; give it its "
            "own template (a profile in ~/.config/runq/profiles/ with template = FILE.jinja)", True)  # fmt: skip


@dataclass(frozen=True)
class TemplateChoice:
    """The chat template a launch passes, and what the plan says about it."""

    path: Path | None  # for --chat-template-file; None: the GGUF's own (or llama-server's ChatML fallback)
    source: str  # "profile", "gguf", "llama.cpp built-in NAME (runq's jinja)", "ChatML fallback", "not read yet"
    note: str | None = None  # for the plan's reasons
    warning: bool = False  # the note is a warning (said before launching)


def choose_template(profile_template: Path | None, chat: ChatFormat | None) -> TemplateChoice:
    """A profile's fixed template first; then the GGUF's own; a GGUF without one gets runq's jinja rendering of the
    built-in its tokens match, or a warning. `chat` None: the header was not read (estimated sizes)."""
    if profile_template is not None:
        return TemplateChoice(profile_template, "profile")
    if chat is None:
        return TemplateChoice(None, "not read yet")
    if chat.present:
        return TemplateChoice(None, "gguf")
    file = builtin_file(chat.builtin) if chat.builtin else None
    note, warning = missing_template_note(chat, file)
    if file is not None:
        return TemplateChoice(file, f"llama.cpp built-in {chat.builtin} (runq's jinja)", note, warning)
    return TemplateChoice(None, "ChatML fallback", note, warning)
