"""A bounded soak on loopback: a runq-started llama-server (generated model) under 8 concurrent chat clients for
200 requests. Every request is answered, runq's and the server's memory stay steady (the figures are printed),
and runq's verification of the placement still holds against the log at the end."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from launcher.catalog.sources import ModelSource
from launcher.llama import log as llama_log
from launcher.llama.server import free_port
from launcher.machine.spec import MachineSpec
from launcher.measure.synth import write_model
from launcher.model.shards import open_local
from launcher.plan.choose import choose
from launcher.plan.types import Request
from tests.helpers import SPEC, RunningRunq, half_the_experts_gpu

CLIENTS = 8
REQUESTS = 200
MAX_TOKENS = 4


def _chat(port: int, i: int) -> dict[str, object]:
    body = {"messages": [{"role": "user", "content": f"Say {i}"}], "max_tokens": MAX_TOKENS, "temperature": 0}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_soak_200_requests_from_8_clients(env: dict[str, str], tmp_path: Path) -> None:
    path = write_model(SPEC.with_(arch="qwen3moe", n_head_kv=2, head_dim=64), tmp_path / "soak.gguf").path
    gpu = half_the_experts_gpu(path, ctx=4096)
    port = free_port()
    argv = ["run", str(path), "--server", "--port", str(port), "--verify-tensors", "--gpu", gpu, "--ram", "16GiB",
            "--ctx", "4096", "--ubatch", "512"]  # fmt: skip
    r = RunningRunq(argv, env)
    try:
        r.wait_for("Serving.")
        assert "override lines: exactly the" in "".join(r.out)
        runq_p = psutil.Process(r.proc.pid)
        server_p = r.llama_server()
        _chat(port, -1)  # warm-up
        samples: list[tuple[int, int, int]] = []  # (requests done, runq RSS, server RSS)
        done: list[int] = []
        errors: list[str] = []
        lock = threading.Lock()
        todo = iter(range(REQUESTS))

        def client() -> None:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    answer = _chat(port, i)
                    ok = answer["choices"][0]["message"]["role"] == "assistant"  # type: ignore[index]
                except (OSError, ValueError, KeyError) as e:
                    ok, answer = False, {"error": repr(e)}
                with lock:
                    (done if ok else errors).append(i if ok else str(answer)[:200])  # type: ignore[arg-type]
                    if len(done) % 25 == 0:
                        samples.append((len(done), runq_p.memory_info().rss, server_p.memory_info().rss))

        samples.append((0, runq_p.memory_info().rss, server_p.memory_info().rss))
        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        took = time.monotonic() - t0
        assert not errors, errors[:3]
        assert len(done) == REQUESTS and r.proc.poll() is None
        if samples[-1][0] != len(done):
            samples.append((len(done), runq_p.memory_info().rss, server_p.memory_info().rss))
        mib = 2**20
        print(f"\nsoak: {REQUESTS} requests from {CLIENTS} clients in {took:.1f} s "
              f"({REQUESTS / took:.1f} requests/s, {MAX_TOKENS} tokens each)")  # fmt: skip
        for n, a, b in samples:
            print(f"  after {n:>3} requests: runq RSS {a / mib:6.1f} MiB, llama-server RSS {b / mib:7.1f} MiB")
        # Steady: after the first quarter, memory grows by no more than a little. llama-server's host prompt cache
        # (each finished slot is saved there, up to the planned --cache-ram) grows about 50 KiB per request here;
        # with `--cache-ram 0` its RSS stays flat (measured: +0.5 MiB over 300 requests).
        quarter = next(s for s in samples if s[0] >= REQUESTS // 4)
        last = samples[-1]
        assert last[1] <= quarter[1] + 4 * mib, "runq's memory grew while it only waits"
        assert last[2] <= quarter[2] * 1.10 + 16 * mib, "llama-server's memory kept growing"
        # runq's verification, against the whole log as it is now.
        log = Path(f"/proc/{server_p.pid}/fd/1").readlink()  # the server writes its log there
        m = open_local(path)
        machine = MachineSpec.model_validate({"gpus": [{"memory": gpu}], "ram": "16GiB"}).to_machine()
        src = ModelSource(path.name, m.tensors, m.hparams, exact=True, size_bytes=m.file_bytes)
        plan = choose("soak", machine, [src], Request(ctx=4096, ubatch=512, server=True)).chosen.plan
        check = llama_log.verify(
            plan, llama_log.parse(log.read_text(errors="replace")), has_gpu=False, expected_overrides=plan.moved
        )
        assert check.ok, check.problems
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as h:
            assert json.loads(h.read())["status"] == "ok"
        r.proc.send_signal(signal.SIGINT)
        code, _, _ = r.finish()
        assert code == 130 and not server_p.is_running()
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
