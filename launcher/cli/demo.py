"""`runq demo`: a tiny random-weight MoE model planned, served, asked once and verified — no download.

CLI layer (prints, exit codes).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from launcher.cli.common import (
    ensure_binaries,
)
from launcher.errors import EXIT_OK

if TYPE_CHECKING:
    from launcher.machine.spec import Machine
    from launcher.plan.types import Request

DEMO_SPEC = {"arch": "deepseek2", "n_layer": 6, "n_embd": 256, "n_ff": 512, "n_ff_exp": 256, "n_expert": 16}


# --- demo --------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from launcher.llama import server as runner
    from launcher.llama.argv import build_argv, launch_for
    from launcher.machine.probe import probe
    from launcher.machine.spec import GPU
    from launcher.measure.synth import SynthSpec, write_model
    from launcher.model.shards import open_local
    from launcher.paths import cache_dir, logs_dir
    from launcher.plan.choose import gpu_for_half_the_experts
    from launcher.plan.inputs import check_port, check_timeout
    from launcher.plan.place import plan
    from launcher.plan.types import Request
    from launcher.view import plan as render_plan

    if args.port:
        check_port(args.port)
    check_timeout(args.timeout)
    print("runq demo: a tiny random-weight MoE model (deepseek2 architecture), generated here — its output is")
    print("gibberish by design. What is real: the plan, llama.cpp, the placement it reports, the server.\n")
    path = cache_dir() / "demo" / "runq-demo.gguf"
    if not path.is_file():
        write_model(SynthSpec(**DEMO_SPEC), path)  # type: ignore[arg-type]
    model = open_local(path)
    req = Request(ctx=4096, ubatch=512, server=True)
    vram = gpu_for_half_the_experts(model.tensors, model.hparams, req.ctx, req.ubatch or 512)
    here = probe(cpu_details=False)
    pretend = with_gpus(here, [GPU(0, "pretend GPU", vram, vram)])
    p = plan(pretend, model.tensors, model.hparams, req)
    size = model.tensors.total_bytes / 2**20
    print(f"Plan against a pretend {vram / 2**20:.0f} MiB GPU ({len(model.tensors)} tensors, {size:.1f} MiB of "
          "weights):")  # fmt: skip
    for line in render_plan.placement_lines(p):
        print(f"  {line}")
    print(f"  -ot {' -ot '.join(str(o) for o in p.overrides)}\n")
    binaries = ensure_binaries(None, args.source, allowed=True, dry=False)
    from launcher.plan.inputs import ServerOptions

    opts = ServerOptions(port=args.port or runner.free_port(), timeout_s=args.timeout)
    argv = build_argv(p, launch_for(str(binaries / "llama-server"), str(path), None, server=opts, extra=("-lv", "5")))
    log_path = logs_dir() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    print(f"Starting llama-server on port {opts.port} (log: {log_path})…")
    server = runner.start(argv, log_path, opts.host, opts.port)
    try:
        took = runner.wait_healthy(server, opts.timeout_s)
        like = p if here.gpus else _demo_plan_here(here, path, model, req, binaries)
        return _demo_check(server, took, p, like)
    finally:
        server.stop()


def _demo_plan_here(here: Machine, path: Any, model: Any, req: Request, binaries: Any) -> Any:
    """What runs here when there is no GPU: the same model and flags planned for this CPU, on llama.cpp's sizes."""
    from dataclasses import replace

    from launcher.llama import fit as fitparams
    from launcher.plan.place import plan

    cpu_only = with_gpus(here, [])
    p = plan(cpu_only, model.tensors, model.hparams, req)
    from launcher.llama.binaries import binaries_at

    oracle = fitparams.Oracle.find(binaries_at(binaries))
    if oracle is None:
        return p
    try:
        proj = fitparams.project(oracle, path, p)
    except fitparams.ProjectionFailed as e:
        print(f"  (llama.cpp could not project the demo model: {e.message})")
        return p
    return plan(cpu_only, model.tensors, model.hparams, replace(req, projections=(proj,)))


def _ask_demo(server: Any) -> dict[str, Any]:
    """One chat request. Random weights now and then end a reply inside a multi-byte character, which
    llama-server answers with HTTP 500 ("invalid UTF-8 byte"): ask again with another seed, at most twice."""
    import urllib.error

    body = {"messages": [{"role": "user", "content": "Say hello!"}], "max_tokens": 24, "temperature": 0.8}
    for seed in (1, 2, 3):
        try:
            return server.request("/v1/chat/completions", {**body, "seed": seed})
        except urllib.error.HTTPError as e:
            if e.code != 500 or seed == 3:
                raise
    raise AssertionError("unreachable")


def _demo_check(server: Any, took: float, p: Any, like: Any) -> int:
    """Ask the demo server once, then check its placement (p's overrides) and its memory, column by column,
    against llama.cpp's own log (`like`: the plan of what really runs here)."""
    from launcher.llama import log as llama_log

    answer = _ask_demo(server)
    reply = answer["choices"][0]["message"].get("content", "")
    speed = answer.get("timings", {}).get("predicted_per_second")
    print(f"Ready in {took:.1f} s. Asked 'Say hello!', the model answered (gibberish by design):\n  {reply!r}")
    if speed:
        print(f"  ({speed:.0f} tokens/s generated)")
    check = llama_log.verify(like, llama_log.parse(server.log_text()), has_gpu=False, expected_overrides=p.moved)
    print("\nVerification against llama.cpp's own log:")
    if like is not p:
        print("  (no GPU here: llama.cpp runs the pretend GPU's share on the CPU too, so the prediction compared")
        print("  is runq's plan of the same flags for this machine's CPU)")
    for line in check.lines:
        print(f"  {line}")
    for prob in check.problems:
        print(f"Error: {prob}", file=sys.stderr)
    return EXIT_OK if check.ok else 1


def with_gpus(machine: Machine, gpus: list[Any]) -> Machine:
    from dataclasses import replace

    return replace(machine, gpus=tuple(gpus), gpu_note=None, source="mixed")
