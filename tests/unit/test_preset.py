"""A router's preset from runq's llama-server commands (llama/preset.py), and the model-fit check for --models-max
(plan/together.py): pure values, no llama.cpp."""

from __future__ import annotations

import pytest

from launcher.errors import UsageError
from launcher.llama.preset import (
    canonical,
    differences,
    model_id,
    pairs,
    parse_options,
    render_ini,
    router_argv,
    router_problems,
    section_of,
    unique_ids,
    unknown_keys,
)
from launcher.plan.together import together_problems
from launcher.plan.types import DevicePlan, Plan

ARGV = ["/b/llama-server", "-m", "/m/a.gguf", "-c", "4096", "-ngl", "62", "--fit", "off",
        "-ot", r"blk\.(?:2[1-9])\.ffn_(?:down|gate|up)_exps\.=CPU", "-ot", r"blk\.1\.ffn_up_exps\.=CUDA0",
        "-ub", "512", "-t", "16", "--temp", "-0.5", "--jinja", "--chat-template-file", "/t/x.jinja",
        "--host", "0.0.0.0", "--port", "8080", "-lv", "4", "--api-key-file", "/k"]  # fmt: skip
HELP = """\
-c,    --ctx-size N                     size of the prompt context
-m,    --model FNAME                    model path
-ngl,  --gpu-layers, --n-gpu-layers N   max. number of layers to store in VRAM
-ot,   --override-tensor <tensor name pattern>=<buffer type>,...
                                        override tensor buffer type
-ub,   --ubatch-size N                  physical maximum batch size
-t,    --threads N                      number of threads
--temp, --temperature N                 temperature
--jinja, --no-jinja                     whether to use jinja template engine for chat
--fit [on|off]                          fit
--chat-template-file JINJA_TEMPLATE_FILE
-lv,   --verbosity, --log-verbosity N   verbosity
--host HOST                             ip address to listen
--port PORT                             port to listen
-a,    --alias STRING                   alias
--api-key-file FNAME                    key file
--log-file FNAME                        log to file
"""


def test_a_section_is_the_command_less_what_the_router_sets() -> None:
    s = section_of("ds", ARGV, log_file="/s/ds.log")
    keys = dict(s.options)
    assert list(keys) == ["m", "c", "ngl", "fit", "ot", "ub", "t", "temp", "jinja", "chat-template-file", "lv",
                          "log-file"]  # fmt: skip
    # two -ot lines would leave only the last in the router: one value, split on ',' as on the command line
    assert keys["ot"] == r"blk\.(?:2[1-9])\.ffn_(?:down|gate|up)_exps\.=CPU,blk\.1\.ffn_up_exps\.=CUDA0"
    assert keys["temp"] == "-0.5" and keys["jinja"] == "true" and keys["log-file"] == "/s/ds.log"
    text = render_ini([s], comment="made by a test")
    assert text.startswith("; made by a test\nversion = 1\n\n[*]\nstop-timeout = 30\n\n[ds]\nm = /m/a.gguf\n")


@pytest.mark.parametrize("value", ["/m/a;b.gguf", "/m/#1.gguf", "/m/a\nb", " /m/a.gguf"])
def test_values_a_preset_cannot_hold_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="a llama-server preset cannot hold"):
        section_of("m", ["/b/llama-server", "-m", value])


def test_ids_are_what_the_router_keeps() -> None:
    assert model_id("DeepSeek-V3.1:UD-Q2_K_XL") == "DeepSeek-V3.1-UD-Q2_K_XL"  # no ':' (the router rewrites it)
    assert model_id("---") == "model"
    assert unique_ids(["A", "a", "b", "A"]) == ["A", "a", "b", "A-2"]
    with pytest.raises(UsageError):
        section_of("bad:name", ["/b/llama-server"])


def test_the_routers_command_carries_no_model_flag() -> None:
    argv = router_argv("/b/llama-server", "/p.ini", models_max=1, host="127.0.0.1", port=8080, api_key_file="/k")
    assert argv == ["/b/llama-server", "--models-preset", "/p.ini", "--models-max", "1", "--host", "127.0.0.1",
                    "--port", "8080", "--api-key-file", "/k"]  # fmt: skip
    keyed = router_argv("/b/llama-server", "/p.ini", models_max=2, host="0.0.0.0", port=1, api_key="s")
    assert keyed[-2:] == ["--api-key", "s"]  # a key given on the command line protects the router too


def test_commands_compare_under_llama_cpps_spellings() -> None:
    options = parse_options(HELP)
    assert options["-ngl"] == "--n-gpu-layers" and options["--gpu-layers"] == "--n-gpu-layers"
    assert options["--jinja"] == "--jinja" and options["--no-jinja"] == "--no-jinja"  # opposites stay apart
    # what the router prints for the section above: its own spellings, sorted, one -ot, its own host/port/alias
    routed = ["--host", "127.0.0.1", "--jinja", "--log-file", "/s/ds.log", "--port", "41234", "--temperature", "-0.5",
              "--alias", "ds", "--chat-template-file", "/t/x.jinja", "--ctx-size", "4096", "--fit", "off",
              "--log-verbosity", "4", "--model", "/m/a.gguf", "--n-gpu-layers", "62",
              "--override-tensor", dict(section_of("ds", ARGV).options)["ot"], "--threads", "16",
              "--ubatch-size", "512"]  # fmt: skip
    assert differences(ARGV[1:], routed, options) == []
    assert canonical(ARGV[1:], options) == canonical(routed, options)
    other = [*routed[:-1], "2048"]
    assert differences(ARGV[1:], other, options) == [
        "planned but not passed: --ubatch-size 512", "passed but not planned: --ubatch-size 2048"]  # fmt: skip
    assert router_problems({"ds": ["/b/x", *routed]}, {"ds": ARGV}, options) == []
    assert router_problems({}, {"ds": ARGV}, options) == ["the router lists no model; runq planned ds"]
    assert unknown_keys([section_of("ds", [*ARGV, "--no-such-flag", "1"])], options) == ["ds: no-such-flag"]


def test_pairs_read_negative_numbers_as_values() -> None:
    assert pairs(["--temp", "-1", "--jinja", "-c", "2"]) == [("--temp", "-1"), ("--jinja", ""), ("-c", "2")]


def _plan(cpu_used: int, capacity: int = 100, margin: int = 10) -> Plan:
    dev = DevicePlan("CPU", capacity, margin, weights_bytes=cpu_used)
    return Plan(fits=True, ctx=2048, cache_type_k="f16", cache_type_v="f16", ubatch=512, threads=2, ngl=0,
                load_mode="mmap", devices=(dev,), placement={}, moved={}, overrides=(), tensor_split=None,
                expert_layers={}, partials=(), predicted_tg_tps=1.0, cache_ram_bytes=None, reasons=())  # fmt: skip


def test_models_max_is_the_worst_case_of_any_n() -> None:
    plans = [("a", _plan(50)), ("b", _plan(30)), ("c", _plan(40))]
    assert together_problems(plans, 1) == []
    assert together_problems(plans, 2) == []  # the two largest, 90 of 90: just fit
    assert together_problems([("a", _plan(50)), ("c", _plan(41))], 2)[0].startswith("CPU: a 50 B + c 41 B = 91 B")
    assert together_problems(plans, 3)[0].startswith("CPU: a 50 B + c 40 B + b 30 B = 120 B")
