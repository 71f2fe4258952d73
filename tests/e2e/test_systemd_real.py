"""`runq service` under a real systemd: a private `systemd --user` manager (tests/support/systemd_user.py) starts
the unit runq writes, with its whole sandbox; ExecStartPost's verification passes; a killed llama-server comes back
through Restart=; `runq service status/logs/restart/remove` work against it.

Where systemd already is PID 1 this still runs its own manager (root) in its own cgroup and mount namespace; it
skips, saying why, where that is impossible (not root, no systemd binaries, no cgroup it may write).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.llama.build import Build
from launcher.llama.server import free_port, http_json
from launcher.measure.synth import SynthSpec, write_model
from tests.helpers import own_cache, runq_proc, wait_until
from tests.support import systemd_user

WHY_NOT = systemd_user.why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no private systemd manager here: {WHY_NOT}")
TINY = SynthSpec(n_layer=4, n_embd=256, n_ff=256, n_ff_exp=256)


@pytest.fixture
def manager() -> Iterator[systemd_user.UserManager]:
    m = systemd_user.start(Path.home() / ".cache" / "runq-test" / uuid.uuid4().hex[:12])
    try:
        yield m
    finally:
        m.stop()


def test_a_service_under_a_real_user_manager(
    manager: systemd_user.UserManager, llama_build: Build, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**manager.env, "RUNQ_CACHE_DIR": str(own_cache(manager.base / "cache", llama_build))}
    model = write_model(TINY, manager.base / "models" / "tiny.gguf")  # not under /tmp: the unit has PrivateTmp=
    port = free_port()
    t0 = time.monotonic()
    r = runq_proc(
        "service", "install", str(model.path), "--name", "t1", "--port", str(port), "--ctx", "2048", "--yes", env=env
    )
    install_s = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr + manager.console()
    assert f"Running: http://127.0.0.1:{port}" in r.stdout
    unit = Path(manager.env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "runq-t1.service"
    assert unit.is_file()
    state = manager.show("runq-t1.service")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert http_json(f"http://127.0.0.1:{port}", "/health", timeout=5)["status"] == "ok"
    # ExecStartPost (`runq service verify`) ran inside the unit's sandbox and passed: the journal says so.
    logs = runq_proc("service", "logs", "t1", env=env)
    assert logs.returncode == 0, logs.stderr
    assert "t1: ready after" in logs.stdout and "weights on the CPU as planned" in logs.stdout, logs.stdout
    assert "llama-server" in logs.stdout and "load_model" in logs.stdout
    status = runq_proc("service", "status", "t1", env=env)
    assert status.returncode == 0, status.stderr
    assert "runq-t1.service: active (running)" in status.stdout and "health: ok" in status.stdout
    # the server's own log was written from inside the sandbox: the memory table is there
    assert re.search(r"CPU\s+weights\s+\S+ \S+\s+\S+ \S+\s+[+-]\d", status.stdout), status.stdout

    # A killed llama-server is started again by Restart=on-failure (30 s apart in the unit; 1 s in a drop-in here).
    dropin = unit.with_name("runq-t1.service.d")
    dropin.mkdir()
    (dropin / "10-test.conf").write_text("[Service]\nRestartSec=1\n")
    manager.systemctl("daemon-reload")
    old = int(manager.show("runq-t1.service")["MainPID"])
    os.kill(old, signal.SIGKILL)
    t_kill = time.monotonic()

    def restarted() -> bool:
        s = manager.show("runq-t1.service")
        new_pid = s.get("MainPID") not in ("0", str(old))
        return s.get("NRestarts") == "1" and s.get("ActiveState") == "active" and new_pid

    wait_until(restarted, "the restart after SIGKILL")
    restart_s = time.monotonic() - t_kill
    assert http_json(f"http://127.0.0.1:{port}", "/health", timeout=5)["status"] == "ok"
    t0 = time.monotonic()
    again = runq_proc("service", "restart", "t1", env=env)
    restart_cmd_s = time.monotonic() - t0
    assert again.returncode == 0 and "Restarted runq-t1.service." in again.stdout, again.stderr
    pid = int(manager.show("runq-t1.service")["MainPID"])
    gone = runq_proc("service", "remove", "t1", env=env)
    assert gone.returncode == 0 and "The model files and the llama.cpp build are kept." in gone.stdout, gone.stderr
    assert not unit.exists() and model.path.exists()
    assert manager.show("runq-t1.service").get("ActiveState") in ("inactive", "failed", None)
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               "llama-server gone after remove", timeout=30)  # fmt: skip
    with capsys.disabled():
        print(
            f"\n[real systemd] manager up in {manager.started_s:.2f} s; install (plan + start + verify) "
            f"{install_s:.1f} s; SIGKILL -> active again {restart_s:.1f} s (RestartSec=1); "
            f"service restart {restart_cmd_s:.1f} s"
        )


def on_disk(hub: Path, repo: str, name: str, spec: SynthSpec) -> Path:
    """A generated model where a download would put it: the Hugging Face cache layout."""
    return write_model(spec, hub / f"models--{repo.replace('/', '--')}" / "snapshots" / "r1" / name).path


def test_a_router_service_under_a_real_user_manager(manager: systemd_user.UserManager, llama_build: Build) -> None:
    """`runq service install --all`: every model on disk behind one address, through the openai client; adding a
    model and running the same command again re-plans; status shows the loaded model's memory; remove stops it."""
    import openai

    hub = manager.base / "hf"
    cache = own_cache(manager.base / "cache", llama_build)
    env = {**manager.env, "RUNQ_CACHE_DIR": str(cache), "HF_HUB_CACHE": str(hub)}
    on_disk(hub, "test/tiny-GGUF", "tiny-Q8_0.gguf", TINY)
    on_disk(hub, "test/other-GGUF", "other-Q8_0.gguf", TINY.with_(arch="qwen3moe", n_head_kv=2, head_dim=64))
    port = free_port()
    install = ["service", "install", "--all", "--port", str(port), "--ctx", "2048", "--yes"]
    r = runq_proc(*install, env=env)
    assert r.returncode == 0, r.stdout + r.stderr + manager.console()
    assert f"Running: http://127.0.0.1:{port}" in r.stdout and "models: other-Q8_0, tiny-Q8_0" in r.stdout
    assert manager.show("runq-router.service")["ActiveState"] == "active"
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    assert sorted(m.id for m in client.models.list()) == ["other-Q8_0", "tiny-Q8_0"]

    def journal() -> str:
        return subprocess.run([env["RUNQ_JOURNALCTL"], "--user-unit", "runq-router.service", "--no-pager"],
                              capture_output=True, text=True, timeout=60).stdout  # fmt: skip

    for name in ("tiny-Q8_0", "other-Q8_0"):
        for seed in (11, 12, 13):  # a reply may end inside a UTF-8 sequence (random weights): another seed
            try:
                answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                                        max_tokens=4, seed=seed)  # fmt: skip
                break
            except openai.InternalServerError as e:
                assert "UTF-8" in str(e) and seed < 13
            except openai.APIConnectionError as e:  # say what the router and systemd said, not only the client
                raise AssertionError(f"{name}: {e}\n{journal()[-6000:]}\n{manager.console()[-3000:]}") from e
        assert answer.model == name
    status = runq_proc("service", "status", "router", env=env)
    assert status.returncode == 0, status.stderr
    assert "other-Q8_0: loaded" in status.stdout and "tiny-Q8_0: unloaded" in status.stdout  # --models-max 1
    assert re.search(r"CPU\s+weights\s+\S+ \S+\s+\S+ \S+\s+[+-]\d", status.stdout), status.stdout
    logs = runq_proc("service", "logs", "router", env=env)  # the last 200 lines: the models' own output by now
    assert logs.returncode == 0 and "llama-server" in logs.stdout, logs.stderr

    wait_until(lambda: "router ready after" in journal(), "ExecStartPost's line in the journal", timeout=30)
    assert "2 models as planned (other-Q8_0, tiny-Q8_0)" in journal()
    on_disk(hub, "test/third-GGUF", "third-Q8_0.gguf", TINY.with_(seed=3))
    r = runq_proc(*install, env=env)  # re-plan: the same command
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(m.id for m in client.models.list()) == ["other-Q8_0", "third-Q8_0", "tiny-Q8_0"]
    router = psutil.Process(int(manager.show("runq-router.service")["MainPID"]))
    procs = [router, *router.children(recursive=True)]
    gone = runq_proc("service", "remove", "router", env=env)
    assert gone.returncode == 0 and "router.ini" in gone.stdout, gone.stdout + gone.stderr
    for p in procs:
        wait_until(lambda p=p: not alive(p), "the router and its models gone", timeout=60)  # type: ignore[misc]


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
