"""The runq command as a user runs it, in-process with a temporary home."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gguf
import pytest

from launcher.measure.synth import SynthModel
from tests.helpers import runq_main, runq_proc


def test_help_and_no_arguments() -> None:
    code, out, _ = runq_main()
    assert code == 0 and "inspect" in out and "exit codes" in out


def test_hw_here() -> None:
    code, out, _ = runq_main("hw")
    assert code == 0
    assert "RAM" in out and "CPU" in out
    assert "GPU" in out  # either GPUs, or "GPUs  none — <reason>"


def test_hw_described_json() -> None:
    code, out, _ = runq_main("hw", "--gpu", "2x24GiB", "--ram", "256GiB", "--cores", "16", "--json")
    assert code == 0
    data = json.loads(out)
    assert [g["total_bytes"] for g in data["gpus"]] == [24 * 2**30] * 2
    assert data["ram_total_bytes"] == 256 * 2**30
    assert data["cpu"]["physical_cores"] == 16


def test_hw_machine_file(tmp_path: Path) -> None:
    f = tmp_path / "box.json"
    f.write_text('{"gpus": [{"memory": "80GiB", "compute_capability": "9.0"}], "ram": "512GiB", "cores": 32}')
    code, out, _ = runq_main("hw", "--machine", str(f))
    assert code == 0
    assert "Described machine" in out and "80.0 GiB total" in out and "sm_90" in out and "512 GiB" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hw", "--gpu", "24"], "Error: GPU memory '24' has no unit"),
        (["hw", "--ram", "lots"], "Error: cannot read --ram 'lots'"),
        (["hw", "--machine", "/nonexistent.json"], "Error: cannot read the machine file"),
        (["hw", "--cores", "0", "--ram", "1GiB"], "Error: --cores 0"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    code, _, err = runq_main(*argv)
    assert code == 2
    assert err.startswith(message)
    assert "Traceback" not in err


def test_inspect_split_set_totals_equal_the_files(models: dict[str, SynthModel]) -> None:
    sm = models["deepseek2-3shards"]
    # The truth, from the official reader: every tensor's bytes in every shard file.
    truth = sum(int(t.n_bytes) for p in sm.paths for t in gguf.GGUFReader(p).tensors)
    experts = sum(int(t.n_bytes) for p in sm.paths for t in gguf.GGUFReader(p).tensors if "_exps." in t.name)
    code, out, _ = runq_main("inspect", str(sm.path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tensor_bytes"] == truth
    assert data["expert_bytes"] == experts
    assert data["non_expert_bytes"] == truth - experts
    assert sum(data["bytes_by_role"].values()) == truth
    assert len(data["shards"]) == 3
    assert data["file_bytes"] == sum(p.stat().st_size for p in sm.paths)
    assert data["hparams"]["n_expert"] == sm.spec.n_expert
    code, out, _ = runq_main("inspect", str(sm.path))
    assert code == 0
    assert f"({truth:,} B)" in out
    assert "Shards         3 files" in out
    assert "layers 1-4:" in out


def test_inspect_lists_tensors(models: dict[str, SynthModel]) -> None:
    code, out, _ = runq_main("inspect", str(models["qwen3moe-q8"].path), "--tensors")
    assert code == 0
    assert "blk.2.ffn_down_exps.weight" in out and "routed_expert" in out


def test_inspect_errors(models: dict[str, SynthModel], tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    code, _, err = runq_main("inspect", str(bad))
    assert code == 1 and err.startswith(f"Error: {bad}: not a GGUF file") and "Hint:" in err
    code, _, err = runq_main("inspect", str(tmp_path / "missing.gguf"))
    assert code == 2 and "no such file" in err and "Hint:" in err  # a path the user gave that is not there: usage
    shard2 = models["deepseek2-3shards"].paths[1]
    code, _, err = runq_main("inspect", str(shard2))
    assert code == 1 and "Hint: give the first shard" in err


def test_python_dash_m(models: dict[str, SynthModel]) -> None:
    r = runq_proc("--version")  # python -m launcher
    assert r.returncode == 0 and r.stdout.startswith("runq ")


@pytest.mark.parametrize("terminal", ["neither", "input only"])
def test_tui_without_a_terminal_says_so_and_exits_2(terminal: str) -> None:
    """Without a terminal on both ends Textual would write escape codes into the pipe and wait for keys forever."""
    import os

    master, slave = os.openpty()
    try:
        stdin = slave if terminal == "input only" else subprocess.DEVNULL
        r = runq_proc("tui", "--gpu", "24GiB", "--ram", "64GiB", stdin=stdin, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2, r.stdout[-500:] + r.stderr
    assert r.stderr.startswith("Error: `runq tui` needs a terminal") and "Hint: " in r.stderr
    assert "\x1b" not in r.stdout + r.stderr
