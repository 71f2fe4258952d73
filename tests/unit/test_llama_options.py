"""Version-aware flags (llama/options.py): `--help` texts read as option lines, and runq's commands checked against
them, for the pinned llama.cpp's layout and made-up older and newer ones. Pure; the real build's help is checked
in tests/edge/test_llama_flags.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from launcher.errors import ExternalToolError
from launcher.llama.argv import Launch, bench_argv, build_argv, fit_default_argv, launch_for, plan_flags
from launcher.llama.options import check_argv, parse_help, parse_options
from launcher.model.shards import open_local
from launcher.plan.place import plan
from launcher.plan.types import Request

# Excerpts in the pinned llama-server's layout (options at column 0, descriptions at 40).
PINNED = """\
----- common params -----

-h,    --help, --usage                  print usage and exit
-m,    --model FNAME                    model path to load
-ctk,  --cache-type-k TYPE              KV cache data type for K
-ts,   --tensor-split N0,N1,N2,...      fraction of the model to offload to each GPU
--rpc  SERVERS                          comma-separated list of RPC servers (host:port)
-t,    --threads N                      number of CPU threads to use during generation (default: -1)
-c,    --ctx-size N                     size of the prompt context (default: 0, 0 = loaded from model)
-b,    --batch-size N                   logical maximum batch size (default: 2048)
-ub,   --ubatch-size N                  physical maximum batch size (default: 512)
-fa,   --flash-attn [on|off|auto]       set Flash Attention use ('on', 'off', or 'auto', default: 'auto')
-lm,   --load-mode MODE                 model loading mode (default: auto)
                                        - auto: mmap, unless a device does not support it
                                        - none: no special loading mode
                                        - mmap: memory-map model
-ngl,  --gpu-layers, --n-gpu-layers N   max. number of layers to store in VRAM, either an exact number,
                                        'auto', or 'all' (default: auto)
-ot,   --override-tensor <tensor name pattern>=<buffer type>,...
                                        override tensor buffer type; for MoE expert weights use --n-cpu-moe
-fit,  --fit [on|off]                   whether to adjust unset arguments to fit in device memory
-fitt, --fit-target MiB0,MiB1,MiB2,...
                                        target margin per device for --fit, comma-separated list of values
--list-devices                          print list of available devices and exit
--spec-type none,draft-simple,draft-mtp,ngram-cache
                                        comma-separated list of types of speculative decoding to use (default:
                                        none)
--draft, --draft-n, --draft-max N       the argument has been removed. use --spec-draft-n-max or
                                        --spec-ngram-mod-n-max
--jinja, --no-jinja                     whether to use jinja template engine for chat (default: enabled)
--host HOST                             ip address to listen on
--port PORT                             port to listen (default: 8080)
-lv,   --verbosity, --log-verbosity N   set the verbosity threshold
-cram, --cache-ram N                    set the maximum cache size in MiB (default: 8192)
"""
# A newer llama.cpp: no --fit, no -cram, -lm renamed away; an older one: --no-mmap, a bare -fa switch.
NEWER = PINNED.replace("-fit,  --fit [on|off]", "-fitx, --fit-x [on|off]").replace("-cram, --cache-ram N", "-crx N")
OLDER = (PINNED.replace("-lm,   --load-mode MODE", "--no-mmap                       ")
         .replace("-fa,   --flash-attn [on|off|auto]", "-fa,   --flash-attn                 "))  # fmt: skip


def test_only_option_lines_count_and_removed_stubs_are_absent() -> None:
    h = parse_options(PINNED)
    assert h.accepts("-ngl") and h.accepts("--n-gpu-layers") and h.accepts("--list-devices")
    assert not h.accepts("--n-cpu-moe")  # named in a description only
    assert not h.accepts("--spec-draft-n-max")
    assert not h.accepts("--draft-max") and any("--draft-max" in o.spellings for o in h.options)  # a removed stub
    assert h.option("-fa").values == ("on", "off", "auto")  # type: ignore[union-attr]
    assert h.option("-lm").values == ("auto", "none", "mmap")  # type: ignore[union-attr]
    assert h.option("--spec-type").values == ("none", "draft-simple", "draft-mtp", "ngram-cache")  # type: ignore[union-attr]
    assert h.takes("-ngl", "all") and h.takes("-ngl", "13") and not h.takes("-ngl", "most")
    assert h.takes("--spec-type", "draft-mtp") and not h.takes("--spec-type", "draft-eagle9")
    assert h.option("----- common params -----") is None
    flags = parse_help(PINNED)
    assert flags["load_mode"] and flags["spec_type"] and flags["fit_target"] and not flags["no_mmap"]
    assert not flags["moe_cache"] and not flags["cpu_moe"]
    # llama-bench's layout: options indented by two, values in <…>.
    bench = parse_options("options:\n  -d, --n-depth <n>        (default: 0)\n  -fa, --flash-attn <on|off|auto>  (x)\n")
    assert bench.accepts("-d") and bench.option("-fa").values == ("on", "off", "auto")  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def offload_plan(models):  # type: ignore[no-untyped-def]
    from launcher.plan import kv_cache, memory
    from tests.helpers import gpu_for as _gpu_for

    m = open_local(models["deepseek2-q8"].path)
    t, hp = m.tensors, m.hparams
    half = sum(t.expert_bytes(il) for il in t.expert_layers[: len(t.expert_layers) // 2])
    room = (
        t.non_expert_bytes() + kv_cache.kv_layout(hp).bytes_for(2048) + memory.gpu_compute_bytes(hp, 2048, 512) + half
    )
    return plan(_gpu_for(room), t, hp, Request(ctx=2048, ubatch=512))


def _launch(text: str, **kw: object) -> Launch:
    h = parse_options(text)
    return launch_for("llama-server", "m.gguf", None, server=None, flags=h.flags(), help=h, where="test", **kw)  # type: ignore[arg-type]


def test_each_build_gets_a_command_it_accepts(offload_plan) -> None:  # type: ignore[no-untyped-def]
    p = offload_plan
    assert p.load_mode == "none"
    pinned = build_argv(p, _launch(PINNED))
    assert {"--fit", "-lm"} <= set(pinned) and pinned[pinned.index("-lm") + 1] == "none"
    newer = build_argv(p, _launch(NEWER))
    assert "--fit" not in newer and "-cram" not in newer and "-lm" in newer
    older = build_argv(p, _launch(OLDER))
    assert "--no-mmap" in older and "-lm" not in older
    # A multi-call `llama`: its subcommand follows the binary.
    multi = build_argv(p, replace(_launch(PINNED), binary="/opt/llama/bin/llama", subcommand="cli"))
    assert multi[:3] == ["/opt/llama/bin/llama", "cli", "-m"]


def test_a_flag_the_build_lacks_is_an_error_naming_it(offload_plan) -> None:  # type: ignore[no-untyped-def]
    mtp = replace(offload_plan, spec_type="draft-mtp")
    no_spec = PINNED.replace("--spec-type none,draft-simple,draft-mtp,ngram-cache", "--spec-x N")
    with pytest.raises(ExternalToolError) as e:
        build_argv(mtp, _launch(no_spec))
    assert "has no --spec-type" in e.value.message and "test" in e.value.message
    with pytest.raises(ExternalToolError) as e:
        build_argv(mtp, _launch(PINNED.replace("draft-mtp,", "")))
    assert "does not take --spec-type draft-mtp" in e.value.message
    assert "--spec-type" in build_argv(mtp, _launch(PINNED))
    older = replace(offload_plan, flash_attn="on")
    with pytest.raises(ExternalToolError, match="-fa"):
        check_argv(
            plan_flags(older, parse_help(OLDER)), parse_options(OLDER), "test"
        )  # a bare -fa takes no value: said, not guessed
    with pytest.raises(ExternalToolError, match="--draft-max"):
        check_argv(["--draft-max", "4"], parse_options(PINNED), "test")  # removed: its stub is not an option
    # The user's own flags after -- are theirs: not checked.
    assert build_argv(offload_plan, _launch(PINNED, extra=("--whatever", "1")))[-2:] == ["--whatever", "1"]


def test_bench_and_fit_dialects_are_checked_too(offload_plan) -> None:  # type: ignore[no-untyped-def]
    bench = parse_options("  -m, --model <f>  x\n  -p, --n-prompt <n>  x\n  -n, --n-gen <n>  x\n"
                          "  -r, --repetitions <n>  x\n  -o, --output <csv|json|jsonl|md|sql>  x\n"
                          "  -ngl, --n-gpu-layers <n>  x\n")  # fmt: skip
    argv = bench_argv("llama-bench", "m.gguf", offload_plan, pp=64, tg=16, reps=1, depth=256)
    with pytest.raises(ExternalToolError, match="has no -d"):  # an older llama-bench without depth
        check_argv(argv[1:], bench, "test")
    fit = fit_default_argv(["llama-fit-params"], "m.gguf", offload_plan, [1024])
    assert "-ngl" not in fit and "-ot" not in fit and fit[-2:] == ["-fitt", "1024"]  # fit gives up when they are set
    check_argv(fit[1:], parse_options(PINNED), "test")


def test_a_gpu_expert_cache_is_tried_only_where_the_build_lists_it(offload_plan) -> None:  # type: ignore[no-untyped-def]
    """`--moe-cache-mib` is newer than the pin: tried (sized from the VRAM the plan leaves) only when this
    llama-server's --help lists it, on one GPU, with experts left on the CPU."""
    from launcher.cli.tune_steps import CACHE_KEEP_MIB, cache_mib
    from launcher.plan.types import DevicePlan

    p = offload_plan
    gpu = p.gpu_devices[0]
    roomy = replace(p, devices=(replace(gpu, capacity_bytes=gpu.capacity_bytes + (2 << 30)), p.cpu))
    newer = parse_options(PINNED + "--moe-cache-mib N                      GPU cache of hot experts in MiB\n")
    assert cache_mib(parse_options(PINNED), roomy) == 0  # the pinned build has none
    mib = cache_mib(newer, roomy)
    assert mib == roomy.gpu_devices[0].free_bytes // 2**20 - CACHE_KEEP_MIB > 1024
    two = replace(roomy, devices=(roomy.devices[0], DevicePlan("CUDA1", 8 << 30, 1 << 30), p.cpu))
    assert cache_mib(newer, two) == 0  # single GPU only
    cache_line = "--moe-cache-mib N                      GPU cache of hot experts in MiB\n"
    assert "--moe-cache-mib" in build_argv(replace(p, moe_cache_mib=mib), _launch(PINNED + cache_line))
    with pytest.raises(ExternalToolError, match="--moe-cache-mib"):
        build_argv(replace(p, moe_cache_mib=mib), _launch(PINNED))
