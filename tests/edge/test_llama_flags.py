"""Version-aware flags against the real build: every tool's own --help, runq's commands for each, and a build laid
out as newer llama.cpp's one multi-call `llama` (`llama serve|cli|bench|fit-params`)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from launcher.llama.argv import bench_argv, fit_argv, fit_default_argv, plan_flags
from launcher.llama.build import Build
from launcher.llama.capabilities import probe_binaries, probe_help, tool_argv
from launcher.llama.options import check_argv
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.plan.place import plan
from launcher.plan.types import Request
from tests.helpers import gpu_for as _gpu_for
from tests.helpers import runq_main

TOOLS = ("llama-server", "llama-cli", "llama-bench", "llama-fit-params")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SynthModel:
    spec = SynthSpec(arch="qwen3moe", n_layer=4, n_embd=256, n_ff_exp=128, n_expert=8, n_head=4, n_head_kv=2)
    return write_model(spec, tmp_path_factory.mktemp("flags") / "q.gguf")


def test_every_tool_accepts_what_runq_writes_for_it(llama_build: Build, model: SynthModel) -> None:
    helps = {t: probe_help(llama_build.path / "bin", t) for t in TOOLS}
    assert all(helps.values())
    server, cli, bench, fit = (helps[t] for t in TOOLS)
    assert server and server.accepts("--spec-type") and server.takes("--spec-type", "draft-mtp")
    assert cli and not cli.accepts("--host") and cli.accepts("--spec-type")
    assert bench and bench.accepts("-d") and not bench.accepts("-c") and bench.takes("-fa", "auto")
    assert fit and fit.accepts("-fitt") and not fit.accepts("--spec-type") and not fit.accepts("-kvu")
    assert not server.accepts("--no-mmap") and not server.accepts("--moe-cache-mib")  # neither exists at the pin
    m = open_local(model.path)
    p = plan(_gpu_for(m.tensors.non_expert_bytes() + (64 << 20)), m.tensors, m.hparams, Request(ctx=2048))
    check_argv(["-m", "x", *plan_flags(p, server.flags())], server, "pinned")
    check_argv(bench_argv("b", "x", p, pp=64, tg=16, reps=1, depth=256)[1:], bench, "pinned")
    check_argv(fit_argv("f", "x", p)[1:], fit, "pinned")
    check_argv(fit_default_argv(["f"], "x", p, [1024])[1:], fit, "pinned")
    assert probe_binaries(llama_build.path / "bin").flags == server.flags()


def _multi_call(tmp: Path, real: Path) -> Path:
    """A directory laid out as newer llama.cpp ships it: one `llama` whose first argument names the tool. It runs
    the real pinned binaries (the layout is what is tested, not a llama.cpp of its own)."""
    d = tmp / "multi" / "bin"
    d.mkdir(parents=True)
    script = d / "llama"
    script.write_text(
        "#!/bin/sh\ncmd=$1; shift\ncase $cmd in\n"
        f'  serve|server) exec {real}/llama-server "$@";;\n  cli) exec {real}/llama-cli "$@";;\n'
        f'  bench) exec {real}/llama-bench "$@";;\n  fit-params) exec {real}/llama-fit-params "$@";;\n'
        f'  --version|version) exec {real}/llama-server --version;;\nesac\necho "unknown command $cmd" >&2; exit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return d


def test_a_multi_call_llama_gets_its_subcommands(llama_build: Build, model: SynthModel, tmp_path: Path) -> None:
    d = _multi_call(tmp_path, llama_build.path / "bin")
    assert tool_argv(d, "llama-server") == [str(d / "llama"), "serve"] and tool_argv(d, "ggml-rpc-server") is None
    code, out, err = runq_main("plan", str(model.path), "--llama-bin", str(d), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["argv"][:2] == [str(d / "llama"), "serve"]
    assert "llama.cpp projection, build 0c1e570" in data["devices"][-1]["kv_source"]  # `llama fit-params` answered
    code, out, err = runq_main("run", str(model.path), "--llama-bin", str(d), "--dry-run")
    assert code == 0, err
    assert f"{d / 'llama'} cli -m " in out
