"""The whole path of the TUI's two main actions: the process `runq tui` becomes, under a pseudo-terminal, driven by
keys from the models list to a running llama-server (`s`) or llama-cli chat (`t`), and stopped as a person would.
Real processes: the CPU build of llama.cpp and a generated model in the Hugging Face cache."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.llama.build import Build
from launcher.llama.server import free_port, http_json
from launcher.measure.synth import SynthSpec, write_model
from tests.helpers import session_cache
from tests.support.pty_session import PtySession

MACHINE = ["--gpu", "none", "--ram", "8GiB"]  # no catalog model fits there at its default context; the file does


@pytest.fixture
def env(llama_build: Build, tmp_path: Path) -> dict[str, str]:
    snap = Path(os.environ["HF_HUB_CACHE"]) / "models--someone--Tiny-MoE-GGUF" / "snapshots" / "abc"
    write_model(SynthSpec(arch="qwen3moe", n_layer=3), snap / "Tiny-MoE-Q8_0.gguf")
    return {**os.environ, "RUNQ_CACHE_DIR": str(session_cache(llama_build)), "TERM": "xterm-256color"}


@pytest.fixture
def session(env: dict[str, str]) -> Iterator[list[PtySession]]:
    started: list[PtySession] = []
    yield started
    for s in started:
        s.close()


def open_plan(env: dict[str, str], started: list[PtySession], *extra: str) -> PtySession:
    """`runq tui` in a terminal, the file's row opened (Enter), its best quant's plan opened (Enter)."""
    s = PtySession([sys.executable, "-m", "launcher", "tui", *MACHINE, *extra], env)
    started.append(s)
    s.expect("1 quant on disk. Enter opens one.", timeout_s=180)  # the list is planned
    s.press("home", "enter")  # what fits comes first: the file, the only row that fits 8 GiB without a GPU
    s.expect("Enter shows its plan.")
    s.press("enter")
    s.expect("Where the tensors go")
    return s


def llama_children(pid: int, name: str) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children(recursive=True) if name in c.name()]


def test_s_hands_the_terminal_to_a_running_server_and_ctrl_c_stops_it(
    env: dict[str, str], session: list[PtySession]
) -> None:
    port = free_port()
    s = open_plan(env, session, "--port", str(port))
    t0 = time.monotonic()
    s.press("s")
    s.expect(f"$ runq run {os.environ['HF_HUB_CACHE']}")  # what the TUI hands over, echoed for the user
    s.expect(f"--auto --server --port {port}")
    s.expect(f"llama-server is ready at http://127.0.0.1:{port}")
    s.expect("Serving. Ctrl-C stops it.")
    ready_s = time.monotonic() - t0
    (server,) = llama_children(s.proc.pid, "llama-server")
    models = http_json(f"http://127.0.0.1:{port}", "/v1/models", timeout=10)
    assert [m["id"] for m in models["data"]] == ["Tiny-MoE-Q8_0"]  # the model's name, not its path
    s.press("ctrl+c")  # the terminal's Ctrl-C: SIGINT to the foreground group, runq and llama-server
    s.expect("Stopping llama-server")
    assert s.wait() == 130
    psutil.wait_procs([server], timeout=10)
    assert not server.is_running()
    assert "Traceback" not in s.text()
    print(f"\n`s` to a serving llama-server: {ready_s:.1f} s")


def test_t_hands_the_terminal_to_a_chat_that_answers(env: dict[str, str], session: list[PtySession]) -> None:
    s = open_plan(env, session)
    t0 = time.monotonic()
    s.press("t")
    s.expect("$ runq run ")
    s.expect("--auto")
    s.expect("/exit or Ctrl+C")  # llama-cli's banner: the model is loaded, the prompt comes next
    s.expect("> ")
    ready_s = time.monotonic() - t0
    (cli,) = llama_children(s.proc.pid, "llama-cli")
    s.press("hello\r")
    s.expect("[ Prompt:")  # llama-cli answered and printed its speed
    s.expect("> ")
    s.press("/exit\r")
    assert s.wait() == 0
    psutil.wait_procs([cli], timeout=10)
    assert not cli.is_running()
    assert "Traceback" not in s.text()
    print(f"\n`t` to a chat prompt: {ready_s:.1f} s")
