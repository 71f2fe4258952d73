"""`runq serve`: one llama-server router for two generated models, driven by the official openai client; the
router runs each model with exactly the command `runq run MODEL --server` prints; nothing outlives runq."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import time
from pathlib import Path

import openai
import psutil
import pytest

from launcher.llama.build import Build
from launcher.llama.capabilities import run_text
from launcher.llama.preset import differences, parse_options
from launcher.llama.server import free_port, http_json
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from tests.helpers import RunningRunq, runq_proc

TINY = SynthSpec(n_layer=4, n_embd=256, n_ff=256, n_ff_exp=256)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthModel, SynthModel]:
    d = tmp_path_factory.mktemp("serve")
    return (write_model(TINY, d / "alpha.gguf"),
            write_model(TINY.with_(arch="qwen3moe", n_head_kv=2, head_dim=64), d / "beta.gguf"))  # fmt: skip


def servers_of(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children(recursive=True) if "llama-server" in c.name()]
    except psutil.NoSuchProcess:
        return []


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def chat(client: openai.OpenAI, model: str, **more: object) -> object:
    """A chat request; random weights now and then end a reply inside a UTF-8 sequence (HTTP 500): another seed."""
    for seed in (11, 12, 13):
        try:
            return client.chat.completions.create(  # type: ignore[call-overload]
                model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, seed=seed, **more
            )
        except openai.InternalServerError as e:
            if "UTF-8" not in str(e) or seed == 13:
                raise
    raise AssertionError("unreachable")


def test_two_models_through_the_openai_client_then_sigterm(
    two: tuple[SynthModel, SynthModel], env: dict[str, str], running: list[RunningRunq], tmp_path: Path
) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    key.chmod(0o600)
    port = free_port()
    r = RunningRunq(["serve", str(two[0].path), str(two[1].path), "--ctx", "2048", "--port", str(port),
                     "--api-key-file", str(key)], env)  # fmt: skip
    running.append(r)
    r.wait_for("Serving.")
    out = "".join(r.out)
    assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in out and f'"$(cat {key})"' in out
    assert "models: alpha, beta" in out
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="s3cret", max_retries=0, timeout=120)
    assert sorted(m.id for m in client.models.list()) == ["alpha", "beta"]
    with pytest.raises(openai.AuthenticationError):  # the same key rule as `runq run --server`
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    for name in ("alpha", "beta"):  # beta is loaded on demand, alpha unloaded first (--models-max 1)
        answer = chat(client, name)
        assert answer.model == name and answer.choices[0].message.role == "assistant"  # type: ignore[attr-defined]
        r.wait_for(f"{name} loaded; memory per device:")  # runq checked its placement in llama.cpp's log
    chunks = list(chat(client, "alpha", stream=True))  # type: ignore[call-overload]
    assert chunks and chunks[-1].choices and chunks[-1].choices[0].finish_reason == "length"
    kids = servers_of(r.proc.pid)
    assert len(kids) == 2  # the router and the model it has loaded now
    r.proc.send_signal(signal.SIGTERM)
    code, _, err = r.finish(timeout=60)
    assert code == 130 and "Stopping the router and its models" in err, err
    assert not [k for k in kids if alive(k)]
    pattern = re.compile(rf"--port {port}\b")  # the router; its models list the preset path in theirs
    assert not [p for p in psutil.process_iter(["name", "cmdline"]) if "llama-server" in (p.info["name"] or "")
                and pattern.search(" ".join(p.info["cmdline"] or []))]  # fmt: skip


def test_router_runs_what_runq_run_prints(
    two: tuple[SynthModel, SynthModel], env: dict[str, str], running: list[RunningRunq], llama_build: Build
) -> None:
    """Each model's command in the router (its /models entry, before any load) is the one `runq run MODEL --server
    --dry-run` prints, flag for flag under llama.cpp's own spellings, less what the router sets per child."""
    port = free_port()
    r = RunningRunq(["serve", str(two[0].path), str(two[1].path), "--ctx", "2048", "--port", str(port)], env)
    running.append(r)
    r.wait_for("Serving.")
    listed = {m["id"]: m["status"]["args"] for m in http_json(f"http://127.0.0.1:{port}", "/models")["data"]}
    options = parse_options(run_text([str(llama_build.binary("llama-server")), "--help"]))
    for model in two:
        dry = runq_proc("run", str(model.path), "--server", "--dry-run", "--ctx", "2048", "--port", str(port), env=env)
        assert dry.returncode == 0, dry.stderr
        planned = shlex.split(dry.stdout.split("[dry-run] would run: ", 1)[1].splitlines()[0])
        routed = listed[model.path.stem]
        assert Path(routed[0]).name == "llama-server" and "--models-preset" not in routed
        assert differences(planned[1:], routed[1:], options) == []
        assert routed[routed.index("--model") + 1] == str(model.path)
        assert routed[routed.index("--alias") + 1] == model.path.stem  # the router names the child by its section
    r.proc.send_signal(signal.SIGINT)
    assert r.finish(timeout=60)[0] == 130


def test_dry_run_prints_the_preset_and_the_command(two: tuple[SynthModel, SynthModel], env: dict[str, str]) -> None:
    r = runq_proc("serve", str(two[0].path), str(two[1].path), "--ctx", "2048", "--dry-run", "--port", "18099", env=env)
    assert r.returncode == 0, r.stderr
    assert "[alpha]\nm = " in r.stdout and "[beta]\nm = " in r.stdout and "stop-timeout = 30" in r.stdout
    command = r.stdout.split("[dry-run] would run: ", 1)[1]
    assert "--models-preset" in command and "--models-max 1 --host 127.0.0.1 --port 18099" in command
    assert "-ngl" not in command  # the router's own flags would override every model's
    r = runq_proc("serve", str(two[0].path), "--ctx", "2048", "--dry-run", "--api-key", "k3y", env=env)
    assert r.returncode == 0 and "--api-key '<api key>'" in r.stdout and "k3y" not in r.stdout, r.stdout
    assert not list(Path(env["RUNQ_CACHE_DIR"], "logs").glob(f"serve-*-{os.getpid()}"))


def test_models_max_is_checked_against_the_plans(two: tuple[SynthModel, SynthModel], env: dict[str, str]) -> None:
    paths = [str(m.path) for m in two]
    # 6 GiB: each fits alone (the RAM margin is 4 GiB), two together do not; 32 GiB: any two fit.
    r = runq_proc(
        "serve", *paths, "--ctx", "2048", "--models-max", "2", "--dry-run", "--gpu", "none", "--ram", "6GiB", env=env
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert "2 of these models loaded at once do not fit: CPU: alpha " in r.stderr and "--models-max 1" in r.stderr
    r = runq_proc(
        "serve", *paths, "--ctx", "2048", "--models-max", "2", "--dry-run", "--gpu", "none", "--ram", "32GiB", env=env
    )
    assert r.returncode == 0, r.stderr
    assert "Checked: any 2 of these models fit together (CPU: " in r.stdout and "--models-max 2" in r.stdout
    r = runq_proc("serve", *paths, "--models-max", "0", "--dry-run", env=env)
    assert r.returncode == 2 and "--models-max 0: must be 1 or more" in r.stderr
    r = runq_proc("serve", *paths, "--host", "0.0.0.0", "--dry-run", env=env)  # the same exposure rule as `runq run`
    assert r.returncode == 2 and "--api-key-file" in r.stderr


# aider 0.86.2's ModelSettings fields (aider/models.py): its loader refuses any other key in the settings file.
AIDER_SETTINGS = {
    "name", "edit_format", "weak_model_name", "use_repo_map", "send_undo_reply", "lazy", "overeager", "reminder",
    "examples_as_sys_msg", "extra_params", "cache_control", "caches_by_default", "use_system_prompt",
    "use_temperature", "streaming", "editor_model_name", "editor_edit_format", "reasoning_tag", "remove_reasoning",
    "system_prompt_prefix", "accepts_settings",
}  # fmt: skip


def test_clients_writes_aider_and_open_webui_files(
    two: tuple[SynthModel, SynthModel], env: dict[str, str], running: list[RunningRunq], tmp_path: Path
) -> None:
    """Against a live router: a model with the deepseek-v3.1 profile's sampling (its file name) and one without.
    The files are checked against aider's schema here; tests/edge/test_clients.py loads them with aider's own
    loader where aider is installed."""
    import json

    import yaml

    ds = tmp_path / "DeepSeek-V3.1-UD-TQ1_0.gguf"
    ds.symlink_to(two[0].path)
    port = free_port()
    r = RunningRunq(["serve", str(ds), str(two[1].path), "--ctx", "2048", "--port", str(port)], env)
    running.append(r)
    r.wait_for("Serving.")
    out = tmp_path / "clients"
    c = runq_proc("clients", "--url", f"http://127.0.0.1:{port}", "--dir", str(out), env=env)
    assert c.returncode == 0, c.stderr
    assert "deepseek-v3.1: context 2,048 tokens, min_p 0.01, temperature 0.6, top_p 0.95" in c.stdout
    settings = yaml.safe_load((out / ".aider.model.settings.yml").read_text())
    assert all(set(entry) <= AIDER_SETTINGS for entry in settings)
    by_name = {e["name"]: e for e in settings}
    ds_entry = by_name["openai/deepseek-v3.1"]
    assert ds_entry["use_temperature"] == 0.6 and ds_entry["extra_params"] == {
        "top_p": 0.95,
        "extra_body": {"min_p": 0.01},
    }
    assert by_name["openai/beta"]["use_temperature"] is False  # no planned temperature: the server's own, not 0
    meta = json.loads((out / ".aider.model.metadata.json").read_text())
    assert meta["openai/beta"]["max_input_tokens"] == 2048 and meta["openai/beta"]["litellm_provider"] == "openai"
    conf = yaml.safe_load((out / "aider.conf.yml").read_text())
    assert conf["openai-api-base"] == f"http://127.0.0.1:{port}/v1" and conf["model"].startswith("openai/")
    webui = (out / "open-webui.env").read_text()
    assert f"OPENAI_API_BASE_URLS=http://127.0.0.1:{port}/v1\n" in webui and '"provider": "llama.cpp"' in webui
    r.proc.send_signal(signal.SIGTERM)
    assert r.finish(timeout=60)[0] == 130


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_a_closed_terminal_or_a_killed_runq_takes_the_router_and_its_model(
    sig: signal.Signals, two: tuple[SynthModel, SynthModel], env: dict[str, str], running: list[RunningRunq]
) -> None:
    """SIGHUP: runq stops the router in order. SIGKILL: runq can do nothing; the router dies with it (the
    parent-death signal) and the loaded model exits when its stdin (the router's pipe) closes."""
    port = free_port()
    r = RunningRunq(["serve", str(two[0].path), "--ctx", "2048", "--port", str(port)], env)
    running.append(r)
    r.wait_for("Serving.")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    chat(client, "alpha")
    kids = servers_of(r.proc.pid)
    assert len(kids) == 2
    r.proc.send_signal(sig)
    code, _, _ = r.finish(timeout=60)
    assert code == (130 if sig == signal.SIGHUP else -signal.SIGKILL)
    t0 = time.monotonic()
    while [k for k in kids if alive(k)] and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)]


def test_sigterm_while_a_model_loads(
    two: tuple[SynthModel, SynthModel], env: dict[str, str], running: list[RunningRunq]
) -> None:
    """A request starts a model; runq gets SIGTERM as soon as that model's process exists (most likely still
    loading): the router and the model are gone, and runq exits 130."""
    import threading

    port = free_port()
    r = RunningRunq(["serve", str(two[1].path), "--ctx", "2048", "--port", str(port)], env)
    running.append(r)
    r.wait_for("Serving.")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)

    def ask() -> None:
        with contextlib.suppress(openai.APIError):
            chat(client, "beta")

    threading.Thread(target=ask, daemon=True).start()
    t0 = time.monotonic()
    while len(kids := servers_of(r.proc.pid)) < 2:
        assert time.monotonic() - t0 < 60, "the router running no model"
        time.sleep(0.005)
    r.proc.send_signal(signal.SIGTERM)
    assert r.finish(timeout=60)[0] == 130
    t0 = time.monotonic()
    while [k for k in kids if alive(k)] and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)]
