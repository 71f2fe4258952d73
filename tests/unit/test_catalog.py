"""Profiles, the estimate of a quant's tensors, and the fixed DeepSeek-V3.1 chat template."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jinja2
import pytest

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import load_profiles, parse_profile, profile_for_file, require_profile, templates_dir
from launcher.errors import UsageError
from launcher.model.tensors import Role

DS = require_profile("deepseek-v3.1")
ROOT = Path(__file__).resolve().parents[2]


def test_deepseek_profile() -> None:
    assert DS.repo == "unsloth/DeepSeek-V3.1-GGUF"
    s = DS.sampling
    assert (s.temperature, s.top_p, s.min_p, s.seed) == (0.6, 0.95, 0.01, 3407)
    assert DS.quant("Q2_K_XL").name == "UD-Q2_K_XL"
    assert DS.quant("ud-q2_k_xl").shards == 6
    assert DS.quant("UD-TQ1_0").shards == 1 and DS.quant("UD-TQ1_0").size_bytes == 170_499_768_256
    assert require_profile("deepseek") is DS
    with pytest.raises(UsageError, match="no quant 'Q9'"):
        DS.quant("Q9")
    with pytest.raises(UsageError, match="no model called 'llama-9'") as e:
        require_profile("llama-9")
    assert e.value.hint and "deepseek-v3.1" in e.value.hint


def test_every_profile_loads() -> None:
    assert {p.name for p in load_profiles()} >= {"deepseek-v3.1"}


def _toml() -> str:
    return (ROOT / "profiles" / "deepseek-v3.1.toml").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace('repo = "unsloth/DeepSeek-V3.1-GGUF"', 'repo = "not a repo"'),
            "repo: String should match",
        ),
        (lambda t: t.replace("n_expert = 256", "n_expert = -1"), "arch.n_expert: Input should be greater than 0"),
        (lambda t: t + "\ncolour = 'red'\n", "colour: Extra inputs are not permitted"),
        (lambda t: t.replace("size_bytes = 170_499_768_256", 'size_bytes = "big"'), "quants.0.size_bytes"),
        (lambda t: t.replace("top_p = 0.95", "top_p = 1.5"), "sampling.top_p"),
        (lambda t: t.replace('template = "deepseek-v3.1.jinja"', 'template = "nope.jinja"'), "template: 'nope.jinja'"),
        (lambda t: t.replace("00001-of-00006", "00002-of-00006"), "must name shard 1"),
        (lambda t: t.replace("[arch]", "[arch"), "not valid TOML"),
    ],
)
def test_bad_profile_names_the_file_and_field(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as e:
        parse_profile(edit(_toml()), "profiles/broken.toml")
    assert e.value.message.startswith("profiles/broken.toml: ")
    assert message in e.value.message


def test_profile_for_file() -> None:
    found = profile_for_file("/x/UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-00001-of-00006.gguf")
    assert found is not None and found[0] is DS and found[1].name == "UD-Q2_K_XL"
    assert profile_for_file("/x/other.gguf") is None


# --- estimate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", [q.name for q in DS.quants])
def test_estimate_matches_published_size_and_the_real_tensor_list(quant: str) -> None:
    q = DS.quant(quant)
    e = estimate(DS, q)
    assert len(e.tensors) == 1086  # 3 + 10 x 61 + 3 x 3 + 8 x 58, as split.tensors.count in the real file
    assert sum(1 for t in e.tensors.tensors if t.type.name == "F32") == 361  # as the real file's histogram
    total = e.tensors.total_bytes + e.header_bytes
    assert total == pytest.approx(q.size_bytes, rel=0.005)
    assert e.tensors.expert_layers == tuple(range(3, 61))
    assert e.tensors["blk.3.ffn_down_exps.weight"].shape == (2048, 7168, 256)
    if q.expert_bits:  # the published down : up ratio survives the scaling to the real size
        bits = q.expert_bits
        assert e.expert_bpw["down"] / e.expert_bpw["up"] == pytest.approx(bits.down / bits.up, rel=0.12)
    assert e.tensors.bytes_by_role()[Role.ROUTED_EXPERT] > 0.85 * e.tensors.total_bytes


def test_estimate_q2_k_xl_non_expert_part_is_about_18_gb() -> None:
    # models.md §2: 255 - 58 x (2 x 1.233 + 1.615) ~ 18 GB stay on the GPU with exps=CPU.
    e = estimate(DS, DS.quant("UD-Q2_K_XL"))
    assert e.tensors.non_expert_bytes() / 1e9 == pytest.approx(18.4, rel=0.1)


# --- the fixed chat template ------------------------------------------------------------------


def _render(**kw: object) -> str:
    env = jinja2.Environment(undefined=jinja2.Undefined)
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    tpl = env.from_string((templates_dir() / "deepseek-v3.1.jinja").read_text())
    return tpl.render(bos_token="<｜begin▁of▁sentence｜>", **kw)


def test_template_has_no_positional_split() -> None:
    text = (templates_dir() / "deepseek-v3.1.jinja").read_text()
    code = re.sub(r"\{#.*?#\}", "", text, flags=re.S)
    assert not re.search(r"\.split\([^)]*,[^)]*\)", code)
    assert "join('</think>')" in code


def test_template_non_thinking_and_thinking() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert _render(messages=msgs, add_generation_prompt=True) == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜><think></think>"
    )
    assert _render(messages=msgs, add_generation_prompt=True, thinking=True).endswith("<｜Assistant｜><think>")
    # enable_thinking is an alias of thinking
    assert _render(messages=msgs, add_generation_prompt=True, enable_thinking=True).endswith("<｜Assistant｜><think>")


def test_template_multi_turn_drops_earlier_thinking() -> None:
    msgs = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>add</think>4</think>!"},
        {"role": "user", "content": "and 3+3?"},
    ]
    out = _render(messages=msgs, add_generation_prompt=True)
    # everything after the first </think> is kept, joined back as it was
    assert "<｜Assistant｜><think></think>4</think>!<｜end▁of▁sentence｜>" in out
    assert "add" not in out
    assert out.endswith("<｜User｜>and 3+3?<｜Assistant｜><think></think>")


def test_template_tool_calls() -> None:
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny"},
    ]
    out = _render(messages=msgs, add_generation_prompt=True)
    assert '<｜tool▁call▁begin｜>weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>' in out
    assert "<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>" in out


def test_profiles_and_templates_ship_in_the_wheel(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "launcher/profiles/deepseek-v3.1.toml" in names
    assert "launcher/templates/deepseek-v3.1.jinja" in names
    # Installed from the wheel (not the source tree), the catalog finds them.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import launcher, launcher.catalog.profiles as c; "
        "print(launcher.__file__); print(c.require_profile('deepseek-v3.1').template_path())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site)}
    )
    assert out.returncode == 0, out.stderr
    mod, template = out.stdout.split()
    assert mod.startswith(str(site)) and template.startswith(str(site))
