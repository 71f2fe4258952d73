"""`runq run` and `runq demo` with real llama-server processes (the CPU build), and their failure modes."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import jinja2
import pytest

from launcher.catalog.profiles import templates_dir
from launcher.errors import UsageError
from launcher.llama import log as llama_log
from launcher.llama.server import free_port
from launcher.measure.synth import SynthModel, write_model
from launcher.plan.inputs import split_extra
from tests.helpers import SPEC, RunningRunq, post, runq_proc, serve_verified


@pytest.fixture(scope="module")
def run_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    d = tmp_path_factory.mktemp("run-models")
    return {
        # Named like the real file, so runq applies the deepseek-v3.1 profile: its template and sampling.
        "deepseek2": write_model(SPEC, d / "DeepSeek-V3.1-UD-TQ1_0.gguf"),
        "qwen3moe": write_model(SPEC.with_(arch="qwen3moe", n_head_kv=2, head_dim=64), d / "qw.gguf"),
    }


@pytest.mark.parametrize("arch", ["deepseek2", "qwen3moe"])
def test_server_runs_the_plan_exactly(
    arch: str, run_models: dict[str, SynthModel], env: dict[str, str], running: list[RunningRunq]
) -> None:
    r, port, out, answer = serve_verified(run_models[arch].path, env, running)
    assert "experts of layers" in out and "on the CPU" in out
    # what a client needs: the address, the key, the model's name as /v1/models lists it
    model = {"deepseek2": "deepseek-v3.1", "qwen3moe": "qw"}[arch]  # its --alias: the profile's name, or the file's
    assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in out and f"models: {model}\n" in out
    assert answer["choices"][0]["message"]["role"] == "assistant"  # type: ignore[index]
    if arch == "deepseek2":  # the profile's fixed template, as llama-server renders it
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        tpl = jinja2.Template((templates_dir() / "deepseek-v3.1.jinja").read_text())
        for kwargs, tail in (({}, "<think>"), ({"thinking": False}, "<think></think>")):  # thinking is on by default
            body: dict[str, object] = {"messages": msgs, "chat_template_kwargs": kwargs}
            got = post(f"http://127.0.0.1:{port}/apply-template", body)["prompt"]
            want = tpl.render(
                messages=msgs, add_generation_prompt=True, bos_token="", thinking=kwargs.get("thinking", True)
            )
            assert got == want == f"Be brief.<｜User｜>Hi<｜Assistant｜>{tail}"  # llama.cpp adds BOS as a token
    server = r.llama_server()
    r.proc.send_signal(signal.SIGINT)  # Ctrl-C: runq stops llama-server cleanly
    code, _, err = r.finish()
    assert code == 130 and "Stopping llama-server" in err
    assert not server.is_running()


def test_killed_server_is_reported(
    run_models: dict[str, SynthModel], env: dict[str, str], running: list[RunningRunq]
) -> None:
    port = free_port()
    r = RunningRunq(["run", str(run_models["qwen3moe"].path), "--server", "--port", str(port)], env)
    running.append(r)
    r.wait_for("Serving.")
    measured = re.search(r"^\s+CPU\s+\S+ \S+\s+([\d.]+) (\S+)", "".join(r.out), re.M)
    assert measured and float(measured.group(1)) > 0  # llama.cpp's own memory breakdown was read (-lv 4)
    r.llama_server().send_signal(signal.SIGKILL)
    code, _, err = r.finish()
    assert code == 4
    assert "Error: llama-server was killed by signal 9" in err and "Hint: the full log is" in err


def test_port_in_use_corrupt_model_missing_binary(
    run_models: dict[str, SynthModel], env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = runq_proc("run", str(run_models["qwen3moe"].path), "--server", "--port", str(busy), env=env)
    assert r.returncode == 4 and f"Error: port {busy} on 127.0.0.1 is already in use" in r.stderr
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(run_models["qwen3moe"].path.read_bytes()[:5000])
    r = runq_proc("run", str(bad), "--server", env=env)
    assert r.returncode == 1 and "past the end of the file" in r.stderr and "Traceback" not in r.stderr
    r = runq_proc(
        "run", str(run_models["qwen3moe"].path), "--server", "--llama-bin", str(tmp_path / "nowhere"), env=env
    )
    assert r.returncode == 4 and "llama.cpp binary not found" in r.stderr
    r = runq_proc("run", str(run_models["qwen3moe"].path), "--server", "--host", "0.0.0.0", env=env)
    assert r.returncode == 2 and "would let anyone on the network use the model" in r.stderr


def test_dry_run_prints_the_command_and_starts_nothing(run_models: dict[str, SynthModel], env: dict[str, str]) -> None:
    r = runq_proc(str(run_models["deepseek2"].path), "--server", "--dry-run", "--port", "9",
                  "--", "-c", "2048", "--no-warmup", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    cmd = next(line for line in r.stdout.splitlines() if line.startswith("[dry-run] would run: "))
    assert "llama-server" in cmd and " -c 2048 " in cmd and cmd.endswith("--no-warmup")
    assert "--chat-template-file" in cmd and "deepseek-v3.1.jinja" in cmd and "--temp 0.6" in cmd


def test_demo_end_to_end(env: dict[str, str]) -> None:
    r = runq_proc("demo", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gibberish by design" in r.stdout
    assert "the model answered" in r.stdout
    assert "override lines: exactly the" in r.stdout
    # Like with like: each column of llama.cpp's report next to the prediction for the same run, within 10%
    # (or the row says why).
    rows = [line.split() for line in r.stdout.splitlines() if re.match(r"\s+(CPU|CUDA\d)\s+(weights|KV|compute)", line)]
    assert {row[1] for row in rows} == {"weights", "KV", "compute"}
    for line in r.stdout.splitlines():
        if m := re.match(r"\s+(CPU|CUDA\d)\s+(weights|KV cache|compute)\s.*?([+-]\d+\.\d)%\s+(.*)$", line):
            assert abs(float(m.group(3))) <= 10 or ";" in m.group(4), line


def test_pins_after_the_double_dash() -> None:
    pins, rest = split_extra(["-c", "8192", "-ot", "x=CPU", "--no-warmup", "-ngl", "10", "-ctk", "q8_0"])
    assert pins == {"ctx": 8192, "ot": ["x=CPU"], "ngl": 10, "cache_type_k": "q8_0"}
    assert rest == ["--no-warmup"]
    with pytest.raises(UsageError):
        split_extra(["-c", "lots"])
    with pytest.raises(UsageError):
        split_extra(["-ngl", "all"])


def test_log_parsing_and_failures() -> None:
    log = """
load_tensors: loading model tensors, this can take a while... (load_mode = none)
tensor blk.1.ffn_up_exps.weight (0 MiB q8_0) buffer type overridden to CPU
load_tensors:        CUDA0 model buffer size =  100.00 MiB
load_tensors: loading model tensors, this can take a while... (load_mode = none)
tensor blk.2.ffn_up_exps.weight (0 MiB q8_0) buffer type overridden to CPU
load_tensors:        CUDA0 model buffer size =  7161.00 MiB
load_tensors:   CPU_Mapped model buffer size =  500.00 MiB
load_tensors:   CPU_REPACK model buffer size =  20.00 MiB
llama_kv_cache:      CUDA0 KV buffer size =    38.00 MiB
sched_reserve:       CUDA0 compute buffer size =   340.00 MiB
"""
    r = llama_log.parse(log)
    assert r.overridden == {"blk.2.ffn_up_exps.weight": "CPU"}  # the last load pass only
    assert r.buffers["CUDA0"] == {"weights": 7161 * 2**20, "kv": 38 * 2**20, "compute": 340 * 2**20}
    assert r.buffers["CPU"]["weights"] == 520 * 2**20  # mapped + repacked host memory
    assert llama_log.failure("ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory") == "oom"
    assert llama_log.failure("couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080") == "port"
    assert llama_log.failure("llama_model_load: error loading model: tensor data is not within bounds") == "model"
    assert llama_log.failure("all good") is None
