"""Print decode and prompt speed of a generated model on this host alone and with its experts on two loopback
`runq worker`s (llama.cpp RPC), and the network time per remote layer that implies (memory.LOOPBACK_LATENCY_S).

Needs a runq build (`runq build`). .venv/bin/python bench/rpc.py [--tokens 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from launcher.llama.server import free_port
from launcher.measure.synth import SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.plan import kv_cache, memory

SPEC = SynthSpec(arch="deepseek2", n_layer=8, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16)
CTX = 4096


def runq(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "launcher", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def wait_line(p: subprocess.Popen[str], text: str, timeout: float = 120) -> list[str]:
    seen, t0 = [], time.monotonic()
    assert p.stdout is not None
    while time.monotonic() - t0 < timeout:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise SystemExit(f"{text!r} not seen: {''.join(seen)}")


def speeds(port: int, tokens: int, runs: int) -> tuple[float, float]:
    tg, pp = [], []
    for _ in range(runs):
        body = json.dumps({"prompt": "Hello there, how are", "n_predict": tokens, "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as r:
            t = json.loads(r.read())["timings"]
        tg.append(t["predicted_per_second"])
        pp.append(t["prompt_per_second"])
    return statistics.median(tg), statistics.median(pp)


def serve(model: Path, tokens: int, runs: int, *extra: str) -> tuple[float, float, list[str]]:
    port = free_port()
    p = runq("run", str(model), "--server", "--port", str(port), "--gpu", "none", "--ctx", str(CTX),
             "--ubatch", "512", "--threads", "1", *extra)  # fmt: skip
    try:
        out = wait_line(p, "Serving.")
        return (*speeds(port, tokens, runs), out)
    finally:
        p.terminate()
        p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = write_model(SPEC, Path(d) / "DeepSeek-V3.1-UD-TQ1_0.gguf").path
        m = open_local(model)
        t, hp = m.tensors, m.hparams
        fixed = (t.non_expert_bytes() + kv_cache.kv_layout(hp).bytes_for(CTX)
                 + memory.cpu_only_compute_bytes(hp, CTX, 512) + memory.SERVER_CACHE_RAM_MIN_BYTES)  # fmt: skip
        ram = memory.RAM_MARGIN_MIN_BYTES + fixed + max(t.expert_bytes(il) for il in t.expert_layers) * 3 // 2
        tg0, pp0, _ = serve(model, a.tokens, a.runs, "--ram", "64GiB")
        workers = [runq("worker", "--port", str(free_port()), "--threads", "1") for _ in range(2)]
        try:
            eps = []
            for w in workers:
                line = next(x for x in wait_line(w, "Serving.") if "listening on" in x)
                eps.append(line.split("listening on ")[1].split(",")[0])
            tg1, pp1, out = serve(model, a.tokens, a.runs, "--ram", f"{ram}B", "--rpc", ",".join(eps))
        finally:
            for w in workers:
                w.terminate()
                w.wait(15)
    remote = sorted({int(x) for line in out if "on RPC" in line and "experts of layers" in line
                     for x in line.split("layers ")[1].split(" on ")[0].replace(",", " ").split()})  # fmt: skip
    extra_ms = (1 / tg1 - 1 / tg0) * 1000
    print(f"generated deepseek2, {hp.n_layer} layers, n_embd {hp.n_embd}, 1 thread per process")
    print(f"  this host alone:         decode {tg0:8.1f} tok/s, prompt {pp0:8.1f} tok/s")
    print(f"  experts of layers {','.join(map(str, remote))} on 2 loopback workers: "
          f"decode {tg1:8.1f} tok/s, prompt {pp1:8.1f} tok/s")  # fmt: skip
    if remote:
        per_layer = extra_ms / len(remote)
        print(f"  network: {extra_ms:.2f} ms more per token = {per_layer:.3f} ms per remote layer "
              f"= {memory.RPC_ROUND_TRIPS_PER_LAYER} round trips of {per_layer / memory.RPC_ROUND_TRIPS_PER_LAYER:.3f} "
              f"ms (memory.py assumes {memory.LOOPBACK_LATENCY_S * 1e3:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
