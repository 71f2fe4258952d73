"""The server that really runs, in the real llama.cpp (the CPU build): slots, lookup tables read on demand, and a
GGUF without a chat template (issue 22). Every llama-server started here is stopped by pid."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.llama import log as llama_log
from launcher.llama import server as runner
from launcher.llama.argv import build_argv, launch_for
from launcher.llama.build import Build
from launcher.llama.server import free_port
from launcher.machine.spec import CPU, Machine
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.plan.inputs import ServerOptions
from launcher.plan.place import plan
from launcher.plan.types import Request
from launcher.units import MiB
from tests.helpers import RunningRunq

BASE = SynthSpec(n_layer=6, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16, n_head_kv=2, head_dim=64)
MESSAGES = [{"role": "system", "content": "SYS"}, {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Again"}]  # fmt: skip


@pytest.fixture(scope="module")
def serving_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    d = tmp_path_factory.mktemp("serving-real")
    lazy = BASE.with_(arch="qwen4exp", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4, ple_rows=1 << 20,
                      lazy_type="F16")  # fmt: skip
    return {
        # a window large against the context: 4 slots allocate 30% more KV than one (notes/23-research.md §4)
        "swa": write_model(BASE.with_(arch="gpt-oss", sliding_window=512), d / "oss-swa.gguf"),
        # a 64 MiB n-gram table (F16: written without quantizing), beside 30 MiB of other weights
        "lazy": write_model(lazy, d / "q4-lazy.gguf"),
        "gemma4": write_model(BASE.with_(arch="gemma4", sliding_window=128, n_embd_per_layer=64), d / "g4-ple.gguf"),
        "bare": write_model(SynthSpec(arch="deepseek2", chat_template=False), d / "bare-deepseek.gguf"),
    }


@pytest.fixture
def servers() -> Iterator[list[runner.Server]]:
    started: list[runner.Server] = []
    yield started
    for s in started:
        s.stop()


def _serve(argv: list[str], tmp_path: Path, servers: list[runner.Server]) -> runner.Server:
    port = int(argv[argv.index("--port") + 1])
    s = runner.start(argv, tmp_path / f"llama-server-{port}.log", "127.0.0.1", port)
    servers.append(s)
    runner.wait_healthy(s, 120)
    return s


def _row(out: str, device: str, column: str) -> tuple[float, float, str]:
    """(predicted, llama.cpp, the whole line) of runq's verification table, in MiB."""
    line = next(x for x in out.splitlines() if re.match(rf"\s+{re.escape(device)}\s+{column}\s", x))
    sizes = re.findall(r"([\d.]+) (KiB|MiB|GiB|B)\b", line)
    scale = {"B": 1 / MiB, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    (a, ua), (b, ub) = sizes[:2]
    return float(a) * scale[ua], float(b) * scale[ub], line


def _server_of(r: RunningRunq) -> tuple[list[str], str]:
    """The llama-server runq started: its command line and its log (its stdout is the log file runq named)."""
    proc = r.llama_server()
    return proc.cmdline(), Path(f"/proc/{proc.pid}/fd/1").readlink().read_text(errors="replace")


def _stop(r: RunningRunq) -> tuple[str, str]:
    r.proc.send_signal(signal.SIGTERM)
    _, out, err = r.finish()
    return out, err


@pytest.mark.parametrize("slots", [1, 4])
def test_a_swa_model_serves_with_the_kv_it_was_planned(
    slots: int,
    serving_models: dict[str, SynthModel],
    env: dict[str, str],
    running: list[RunningRunq],
) -> None:
    """`runq run --server [--parallel 4]` on a sliding-window model: llama.cpp's KV cache within 5% of the plan,
    the slot count in the plan, the command and llama-server's own line; nothing in the table runq caused."""
    port = free_port()
    argv = ["run", str(serving_models["swa"].path), "--server", "--port", str(port), "--ctx", "4096"]
    r = RunningRunq([*argv, *(["--parallel", str(slots)] if slots > 1 else [])], env)
    running.append(r)
    r.wait_for("Serving.")
    cmd, log = _server_of(r)
    out = "".join(r.out)
    predicted, allocated, line = _row(out, "CPU", "KV cache")
    assert abs(predicted - allocated) <= 0.05 * allocated, line
    assert allocated == pytest.approx({1: 7.50, 4: 9.75}[slots], abs=0.01)  # 1,024 or 2,560 sliding-window cells
    assert cmd[cmd.index("-np") + 1] == str(slots) and ("-kvu" in cmd) == (slots > 1)
    assert f"n_slots = {slots}," in log and f"kv_unified = '{'true' if slots > 1 else 'false'}'" in log
    assert f"({slots} server slot" in out
    if slots > 1:
        assert "runq's formula for 4" in line  # llama-fit-params projected one slot; runq added three
    assert "please report" not in out
    _stop(r)


@pytest.mark.parametrize(("model", "size"), [("lazy", "64.0 MiB"), ("gemma4", "152 KiB")])
def test_lazy_tables_are_mapped_and_read_on_demand(
    model: str,
    size: str,
    serving_models: dict[str, SynthModel],
    env: dict[str, str],
    running: list[RunningRunq],
) -> None:
    """`-- -lzm on` (qwen4exp's n-gram table, gemma4's per-layer embeddings): the plan counts the table on a line
    of its own, passes -lzm on, and llama.cpp reads it on demand (its own mapped buffer); every row of the check
    compares like with like."""
    port = free_port()
    path = serving_models[model].path
    r = RunningRunq(["run", str(path), "--server", "--port", str(port), "--ctx", "4096", "--", "-lzm", "on"], env)
    running.append(r)
    r.wait_for("Serving.")
    cmd, log = _server_of(r)
    out = "".join(r.out)
    assert cmd[cmd.index("-lzm") + 1] == "on" and cmd.count("-lzm") == 1  # the pin, planned around, passed once
    assert re.search(rf"^\s+lazy\s+{re.escape(size)} .*not counted in RAM", out, re.M), out
    assert re.search(r"tensor per_layer_token_embd.weight \(size = \d+ MiB\) lazy read enabled", log)
    if model == "lazy":
        assert "CPU_Mapped model buffer size =    64.00 MiB" in log
    for column in ("weights", "KV cache", "compute"):
        predicted, allocated, line = _row(out, "CPU", column)
        # llama-fit-params prints whole MiB, rounded down: gemma4's compute is 10.77 MiB, projected as 10
        assert abs(predicted - allocated) <= max(0.05 * allocated, 1.0), line
    assert "please report" not in out
    _stop(r)


def _tiny_cpu() -> Machine:
    return Machine(ram_total_bytes=16 << 30, ram_available_bytes=16 << 30, source="described",
                   cpu=CPU(physical_cores=1))  # fmt: skip


def test_load_mode_none_keeps_lazy_tables_mapped(
    llama_build: Build, serving_models: dict[str, SynthModel], tmp_path: Path, servers: list[runner.Server]
) -> None:
    """-lm none reads the other CPU tensors into RAM; llama.cpp still maps a table it reads on demand: the process
    holds the table's pages only with -lzm off (resident), and runq's check agrees with llama.cpp both ways."""
    m = open_local(serving_models["lazy"].path)
    table = m.tensors["per_layer_token_embd.weight"].nbytes
    rss = {}
    for mode in ("on", "off"):
        p = plan(_tiny_cpu(), m.tensors, m.hparams, Request(ctx=1024, load_mode="none", lazy_mode=mode))
        assert p.load_mode == "none" and p.cpu.lazy_bytes == (table if mode == "on" else 0)
        launch = launch_for(str(llama_build.bin_dir / "llama-server"), str(m.shards[0].name), None,
                            server=ServerOptions(port=free_port()))  # fmt: skip
        s = _serve(build_argv(p, launch), tmp_path, servers)
        check = llama_log.verify(p, llama_log.parse(s.log_text()), has_gpu=False, tensors=m.tensors)
        weights = next(ln for ln in check.lines if " weights " in ln)
        assert "+0.0%" in weights or "-0.0%" in weights, check.lines
        rss[mode] = psutil.Process(s.proc.pid).memory_info().rss
        s.stop()
    assert rss["off"] - rss["on"] > table / 2, rss  # on demand, the table's pages are not the process's


def _apply_template(s: runner.Server) -> str:
    return str(s.request("/apply-template", {"messages": MESSAGES})["prompt"])


@pytest.mark.parametrize("name", ["deepseek3", "kimi-k2", "chatglm4", "gpt-oss", "llama4"])
def test_each_shipped_rendering_is_llama_cpps_builtin(
    name: str, llama_build: Build, serving_models: dict[str, SynthModel], tmp_path: Path,
    servers: list[runner.Server],
) -> None:  # fmt: skip
    """templates/builtin-NAME.jinja under --jinja renders what `--no-jinja --chat-template NAME` does."""
    from launcher.catalog.chat_templates import builtin_file

    server = str(llama_build.bin_dir / "llama-server")
    base = [server, "-m", str(serving_models["bare"].path), "-c", "1024", "-np", "1", "-t", "1"]
    prompts = []
    for flags in (
        ["--jinja", "--chat-template-file", str(builtin_file(name))],
        ["--no-jinja", "--chat-template", name],
    ):
        s = _serve([*base, *flags, "--port", str(free_port())], tmp_path, servers)
        prompts.append(_apply_template(s))
        s.stop()
    assert prompts[0] == prompts[1] and "<|im_start|>" not in prompts[0]


def test_a_gguf_without_a_template_is_served_its_builtin(
    llama_build: Build,
    serving_models: dict[str, SynthModel],
    env: dict[str, str],
    running: list[RunningRunq],
    tmp_path: Path,
    servers: list[runner.Server],
) -> None:  # fmt: skip
    """`runq run --server` on a DeepSeek-vocabulary GGUF without tokenizer.chat_template: a warning before the
    launch, and the prompt llama-server builds is DeepSeek's (llama.cpp's built-in), not ChatML."""
    path = serving_models["bare"].path
    plain = _serve([str(llama_build.bin_dir / "llama-server"), "-m", str(path), "-c", "1024", "-t", "1",
                    "--port", str(free_port())], tmp_path, servers)  # fmt: skip
    assert _apply_template(plain).startswith("<|im_start|>system")  # what llama-server does alone: ChatML
    plain.stop()
    port = free_port()
    r = RunningRunq(["run", str(path), "--server", "--port", str(port), "--ctx", "1024"], env)
    running.append(r)
    r.wait_for("Serving.")
    cmd = r.llama_server().cmdline()
    assert "--jinja" in cmd and cmd[cmd.index("--chat-template-file") + 1].endswith("builtin-deepseek3.jinja")
    prompt = json.loads(_post(port, {"messages": MESSAGES}))["prompt"]
    assert prompt == "SYS\n\n<｜User｜> Hi <｜Assistant｜>Yo<｜end▁of▁sentence｜><｜User｜>Again<｜Assistant｜>"
    _, err = _stop(r)
    assert "Warning: this GGUF has no chat template" in err and "'deepseek3'" in err


def _post(port: int, body: dict[str, object]) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/apply-template", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read().decode()
