"""`runq plan` as a user runs it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from launcher.cli.main import main
from launcher.measure.synth import SynthModel


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_text_explains_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--cores", "16")
    assert code == 0, err
    # Compute on CUDA0 is ~2.3 GiB (memory.py), which leaves room for part of layer 3's experts: IQ3_XXS fits.
    assert out.startswith("DeepSeek-V3.1 UD-IQ3_XXS: 16,384 tokens of context")
    assert "sizes: estimated: HF_HUB_OFFLINE is set" in out
    assert re.search(r"> UD-IQ3_XXS\s+260 GiB\s+yes", out)  # the chosen row of the quant table
    assert "Memory per device:" in out and "CUDA0" in out
    assert "sources: weights: runq estimate; KV cache: runq estimate; compute: runq estimate" in out
    assert "layer 3: ffn_gate_exps, ffn_up_exps on CUDA0" in out and "experts of layers 3-60 on the CPU" in out
    cmd = out.split("Command:\n", 1)[1].strip()
    argv = shlex.split(cmd)
    assert argv[0] == "llama-server"
    assert argv[argv.index("-ot") + 1] == r"\.ffn_down_exps\.=CPU"
    for flag, value in (("-ngl", "62"), ("-c", "16384"), ("--temp", "0.6"), ("--top-p", "0.95"), ("--seed", "3407")):
        assert argv[argv.index(flag) + 1] == value
    assert argv[argv.index("--chat-template-file") + 1].endswith("deepseek-v3.1.jinja")
    assert Path(argv[argv.index("--chat-template-file") + 1]).is_file()
    assert "--jinja" in argv and "--fit" in argv
    assert argv[argv.index("--alias") + 1] == "deepseek-v3.1"  # the OpenAI model id: the model's name, not a path


def test_plan_json_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "deepseek-v3.1", "--gpu", "80GiB", "--ram", "512GiB", "--json")
    assert code == 0
    data = json.loads(out)
    for key in ("model", "quant", "exact", "ctx", "devices", "cpu_tensors", "overrides", "argv", "predicted_tg_tps",
                "candidates"):  # fmt: skip
        assert key in data
    assert data["quant"] == "UD-Q5_K_XL" and data["exact"] is False
    for d in data["devices"]:
        assert {"name", "budget_bytes", "weights_bytes", "kv_bytes", "compute_bytes"} <= set(d)
        assert d["weights_bytes"] + d["kv_bytes"] + d["compute_bytes"] + d["extra_bytes"] <= d["budget_bytes"]
    assert all(re.fullmatch(r".+=(CPU|CUDA\d+)", o) for o in data["overrides"])
    assert {"quant", "fits", "gpu_bytes", "cpu_bytes", "predicted_tg_tps"} <= set(data["candidates"][0])
    assert "blk.60.ffn_down_exps.weight" in data["cpu_tensors"]


def test_plan_does_not_fit_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "128GiB")
    assert code == 3
    assert "UD-TQ1_0" in out  # the table of what was tried
    assert err.startswith("Error: no quant of DeepSeek-V3.1 fits")
    assert "Hint: UD-TQ1_0 needs about" in err
    code, out, _ = run(capsys, "plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "128GiB", "--json")
    assert code == 3 and json.loads(out)["fits"] is False


def test_plan_local_file_is_exact(capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel]) -> None:
    path = models["deepseek2-3shards"].path
    code, out, err = run(capsys, "plan", str(path), "--gpu", "2GiB", "--ram", "16GiB", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["exact"] is True and data["quant"] == path.name
    assert data["argv"][data["argv"].index("-m") + 1] == str(path.resolve())
    assert data["ctx"] == 4096  # the model's trained context is below the default
    assert data["argv"][data["argv"].index("--alias") + 1] == "deepseek2-3shards"  # the file's name, no shard number


def test_plan_pins(capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel]) -> None:
    machine = ["--gpu", "80GiB", "--ram", "512GiB"]
    pins = [
        "--quant",
        "Q2_K_XL",
        "--ctx",
        "32768",
        "-ctk",
        "q8_0",
        "--ubatch",
        "1024",
        "--ot",
        r"blk\.3\.ffn_up_exps=CPU",
    ]
    code, out, _ = run(capsys, "plan", "deepseek-v3.1", *machine, *pins, "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["quant"], data["ctx"], data["cache_type_k"], data["ubatch"]) == ("UD-Q2_K_XL", 32768, "q8_0", 1024)
    assert data["overrides"][0] == r"blk\.3\.ffn_up_exps=CPU"
    assert "blk.3.ffn_up_exps.weight" in data["cpu_tensors"]
    code, out, _ = run(capsys, "plan", str(models["qwen3moe-q8"].path), "--gpu", "4GiB", "--ram", "16GiB",
                       "--ngl", "2", "--cli", "--json")  # fmt: skip
    data = json.loads(out)
    assert data["ngl"] == 2 and data["argv"][0] == "llama-cli" and data["cache_ram_bytes"] is None
    assert "--alias" not in data["argv"]  # a chat has no API clients


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "llama-9"], "Error: no model called 'llama-9'"),
        (["plan", "deepseek-v3.1", "--quant", "Q9"], "Error: deepseek-v3.1 has no quant 'Q9'"),
        (["plan", "deepseek-v3.1", "--ctx", "1000000"], "Error: --ctx 1,000,000 is more than"),
        (["plan", "deepseek-v3.1", "-ctk", "q3"], "Error: --cache-type-k 'q3' is not a KV cache type"),
        (["plan", "deepseek-v3.1", "--ot", "nobuffer"], "Error: --ot 'nobuffer': expected PATTERN=BUFFER"),
        (["plan", "deepseek-v3.1", "--ot", "blk.(=CPU"], "Error: --ot 'blk.(=CPU': the pattern is not a valid regex"),
        (["plan", "/nonexistent/model.gguf"], "Error: /nonexistent/model.gguf: no such file"),
    ],
)
def test_plan_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv, "--gpu", "24GiB", "--ram", "256GiB")
    assert code in (1, 2)
    assert err.startswith(message), err
    assert "Traceback" not in err
