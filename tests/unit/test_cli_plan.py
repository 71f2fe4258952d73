"""`runq plan` as a user runs it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from launcher.measure.synth import SynthModel
from tests.helpers import runq_main


def test_plan_text_explains_everything() -> None:
    code, out, err = runq_main("plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--cores", "16")
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


def test_plan_json_fields() -> None:
    code, out, _ = runq_main("plan", "deepseek-v3.1", "--gpu", "80GiB", "--ram", "512GiB", "--json")
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


def test_plan_does_not_fit_exit_3() -> None:
    code, out, err = runq_main("plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "128GiB")
    assert code == 3
    assert "UD-TQ1_0" in out  # the table of what was tried
    assert err.startswith("Error: no quant of DeepSeek-V3.1 fits")
    assert "Hint: UD-TQ1_0 needs about" in err
    code, out, _ = runq_main("plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "128GiB", "--json")
    assert code == 3 and json.loads(out)["fits"] is False


def test_plan_local_file_is_exact(models: dict[str, SynthModel]) -> None:
    path = models["deepseek2-3shards"].path
    code, out, err = runq_main("plan", str(path), "--gpu", "2GiB", "--ram", "16GiB", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["exact"] is True and data["quant"] == path.name
    assert data["argv"][data["argv"].index("-m") + 1] == str(path.resolve())
    assert data["ctx"] == 4096  # the model's trained context is below the default
    assert data["argv"][data["argv"].index("--alias") + 1] == "deepseek2-3shards"  # the file's name, no shard number


def test_plan_pins(models: dict[str, SynthModel]) -> None:
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
    code, out, _ = runq_main("plan", "deepseek-v3.1", *machine, *pins, "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["quant"], data["ctx"], data["cache_type_k"], data["ubatch"]) == ("UD-Q2_K_XL", 32768, "q8_0", 1024)
    assert data["overrides"][0] == r"blk\.3\.ffn_up_exps=CPU"
    assert "blk.3.ffn_up_exps.weight" in data["cpu_tensors"]
    code, out, _ = runq_main("plan", str(models["qwen3moe-q8"].path), "--gpu", "4GiB", "--ram", "16GiB",
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
def test_plan_errors(argv: list[str], message: str) -> None:
    code, _, err = runq_main(*argv, "--gpu", "24GiB", "--ram", "256GiB")
    assert code in (1, 2)
    assert err.startswith(message), err
    assert "Traceback" not in err


def test_plan_takes_what_users_paste(models: dict[str, SynthModel]) -> None:
    """A context as model cards write it (32k), a Hub page's URL for its repo id; and what runq cannot know
    before a download is said as such, not as a path that looks real."""
    machine = ["--gpu", "24GiB", "--ram", "256GiB", "--cores", "16"]
    code, out, err = runq_main("plan", str(models["qwen3moe-q8"].path), *machine, "--ctx", "32k", "--json")
    assert code == 0 and json.loads(out)["ctx"] == 32768, err
    for url in (
        "https://huggingface.co/unsloth/DeepSeek-V3.1-GGUF",
        "https://hf.co/unsloth/DeepSeek-V3.1-GGUF/tree/main",
    ):
        code, out, err = runq_main("plan", url, *machine)
        assert code == 0 and out.startswith("DeepSeek-V3.1 UD-IQ3_XXS"), err
    cmd = shlex.split(out.split("Command:\n", 1)[1].strip())
    model = cmd[cmd.index("-m") + 1]
    assert "REVISION" not in out and "/<after download>/UD-IQ3_XXS/" in model


def test_values_allowed_but_hardly_meant_are_warned_about(models: dict[str, SynthModel]) -> None:
    path = str(models["qwen3moe-q8"].path)
    code, out, err = runq_main("plan", path, "--gpu", "none", "--ram", "16GiB", "--cores", "2", "--threads", "1000",
                         "--ubatch", "3", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["threads"] == 1000  # honoured, and said
    assert "Warning: --threads 1000 is more than the 2 CPU cores" in err
    assert "Warning: --ubatch 3: llama.cpp would read prompts 3 tokens at a time" in err
    code, _, err = runq_main("plan", path, "--gpu", "none", "--ram", "16GiB", "--cores", "2", "--threads", "2")
    assert code == 0 and "Warning" not in err


@pytest.mark.parametrize("layout", ["huggingface_hub", "bare snapshot"])
def test_a_quant_another_tool_downloaded_is_planned_offline_from_disk(layout: str) -> None:
    """`runq models --local` lists it, so `runq plan ORG/REPO` plans it (exact, from its header) and `runq run`
    uses it, offline and without runq ever having listed the repo."""
    import os

    from launcher.measure.synth import SynthSpec, write_model

    repo = Path(os.environ["HF_HUB_CACHE"]) / "models--someone--Tiny-MoE-GGUF"
    if layout == "huggingface_hub":  # snapshots/<commit>/FILE -> ../../blobs/<sha>, refs/main names the commit
        blob = write_model(SynthSpec(arch="qwen3moe", n_layer=3), repo / "blobs" / "a1b2c3.gguf").path
        blob.rename(repo / "blobs" / "a1b2c3")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
        (repo / "snapshots" / "0123abcd").mkdir(parents=True)
        (repo / "snapshots" / "0123abcd" / "Tiny-MoE-Q8_0.gguf").symlink_to("../../blobs/a1b2c3")
    else:
        write_model(SynthSpec(arch="qwen3moe", n_layer=3), repo / "snapshots" / "abc" / "Tiny-MoE-Q8_0.gguf")
    machine = ["--gpu", "none", "--ram", "16GiB", "--cores", "2"]
    code, out, err = runq_main("plan", "someone/Tiny-MoE-GGUF", *machine)
    assert code == 0, err
    assert "sizes: exact: 1 of 1 quants from the files on disk (HF_HUB_OFFLINE is set)" in out
    code, out, err = runq_main("run", "someone/Tiny-MoE-GGUF", *machine, "--dry-run")
    assert code == 0, err
    assert "would download" not in err and f"-m {repo}/snapshots/" in out and "Tiny-MoE-Q8_0.gguf" in out


def test_the_users_own_alias_after_the_double_dash_wins(models: dict[str, SynthModel]) -> None:
    path = str(models["qwen3moe-q8"].path)
    for extra, alias in (([], "qwen3moe-q8"), (["--alias", "mine"], "mine"), (["-a", "mine"], "mine")):
        code, out, err = runq_main("run", path, "--server", "--dry-run", "--gpu", "none", "--ram", "16GiB",
                             "--", *extra)  # fmt: skip
        assert code == 0, err
        argv = shlex.split(out.split("[dry-run] would run: ", 1)[1].strip())
        names = [i for i, a in enumerate(argv) if a in ("-a", "--alias")]
        assert len(names) == 1 and argv[names[0] + 1] == alias, argv
