"""A GGUF without a chat template (catalog/chat_templates.py): which built-in its vocabulary matches, what runq
passes and says. tests/e2e/test_serving_real.py checks every shipped rendering against llama-server's own."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from launcher.catalog.chat_templates import BUILTINS, CHATML, ChatFormat, builtin_file, chat_format, choose_template
from launcher.measure.synth import DEEPSEEK_SPECIALS, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.pipeline.target import resolve


def _md(tokens: list[str], arch: str = "deepseek2", template: str | None = None) -> dict[str, object]:
    md: dict[str, object] = {"general.architecture": arch, "tokenizer.ggml.tokens": ("a", "b", *tokens)}
    if template is not None:
        md["tokenizer.chat_template"] = template
    return md


@pytest.mark.parametrize(
    ("tokens", "arch", "builtin"),
    [
        (DEEPSEEK_SPECIALS, "deepseek2", "deepseek3"),
        (["<|im_user|>", "<|im_assistant|>", "<|im_middle|>", "<|im_end|>"], "deepseek2", "kimi-k2"),  # Kimi-K2
        (["<|start|>", "<|message|>", "<|channel|>", "<|end|>"], "gpt-oss", "gpt-oss"),
        (["[gMASK]", "<sop>", "<|user|>", "<|assistant|>"], "glm4moe", "chatglm4"),
        (["<|header_start|>", "<|header_end|>", "<|eot|>"], "llama4", "llama4"),
        (["<|im_start|>", "<|im_end|>"], "qwen3moe", CHATML),
        (DEEPSEEK_SPECIALS, "deepseek4", None),  # V4's own template is not V3's: said, not replaced
        (["<start_of_turn>", "<end_of_turn>"], "gemma4", None),  # no rendering shipped
    ],
)
def test_the_vocabulary_picks_the_builtin(tokens: list[str], arch: str, builtin: str | None) -> None:
    assert chat_format(_md(tokens, arch)) == ChatFormat(False, builtin)
    assert chat_format(_md(tokens, arch, template="{{ messages }}")) == ChatFormat(True)


def test_every_mapped_builtin_ships_a_template_that_parses() -> None:
    for name, _ in BUILTINS:
        path = builtin_file(name)
        if name == CHATML:
            assert path is None  # llama-server's own fallback is the right one
            continue
        assert path is not None and path.name == f"builtin-{name}.jinja"
        jinja2.Environment().parse(path.read_text(encoding="utf-8"))


def test_what_runq_passes_and_says() -> None:
    profile = Path("/x/fixed.jinja")
    assert choose_template(profile, ChatFormat(False, "deepseek3")).path == profile  # a profile's fix wins
    assert choose_template(None, None).source == "not read yet" and choose_template(None, None).note is None
    assert choose_template(None, ChatFormat(True)).path is None
    ds = choose_template(None, ChatFormat(False, "deepseek3"))
    assert ds.path == builtin_file("deepseek3") and ds.warning and "fall back to ChatML" in (ds.note or "")
    qwen = choose_template(None, ChatFormat(False, CHATML))
    assert qwen.path is None and not qwen.warning and "made for" in (qwen.note or "")
    unknown = choose_template(None, ChatFormat(False))
    assert unknown.path is None and unknown.warning and "no built-in" in (unknown.note or "")


def test_a_generated_gguf_without_a_template(tmp_path: Path) -> None:
    """synth can leave tokenizer.chat_template out; the target's source then carries what runq will do."""
    bare = write_model(SynthSpec(arch="deepseek2", chat_template=False), tmp_path / "bare.gguf")
    full = write_model(SynthSpec(arch="deepseek2"), tmp_path / "full.gguf")
    assert "tokenizer.chat_template" not in open_local(bare.path).metadata
    assert resolve(str(bare.path)).sources[0].chat == ChatFormat(False, "deepseek3")
    assert resolve(str(full.path)).sources[0].chat == ChatFormat(True)
