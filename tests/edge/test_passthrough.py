"""The flags runq sets itself, against the real llama.cpp build: none can be given again after `--` under another
spelling (llama.cpp takes the last of a repeated flag, so a second `--host` would win over runq's checked one)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

from launcher.catalog.profiles import load_profiles
from launcher.llama.argv import build_argv, launch_for
from launcher.llama.build import Build
from launcher.machine.spec import CPU, GPU, Machine
from launcher.measure.synth import SynthModel
from launcher.model.shards import open_local
from launcher.plan.inputs import OWNED_FLAGS, PIN_FLAGS, ServerOptions, llama_flag
from launcher.plan.place import plan
from launcher.plan.types import Request

KNOWN = {f for names in (*OWNED_FLAGS, *PIN_FLAGS) for f in names}
# What runq emits that a user may set again after `--` on purpose (the last one wins: theirs): the profile's
# sampling, llama.cpp's log verbosity (runq leaves out its own when one is given), flash attention.
PASSED_THROUGH = {"--temp", "--top-p", "--min-p", "--top-k", "--repeat-penalty", "--presence-penalty", "--seed",
                  "-lv", "-fa", "--alias"}  # fmt: skip


def _alias_groups(help_text: str) -> list[set[str]]:
    """Each option's spellings, from the lines of `--help` that start with a flag."""
    groups = []
    for line in help_text.splitlines():
        names: set[str] = set()
        for token in line.split():
            if not token.startswith("-"):
                break
            names.add(token.rstrip(","))
        if names:
            groups.append(names)
    return groups


def test_every_spelling_of_a_flag_runq_sets_is_known(llama_build: Build) -> None:
    for binary in ("llama-server", "llama-cli"):
        r = subprocess.run([str(llama_build.binary(binary)), "--help"], capture_output=True, text=True, timeout=60)
        groups = _alias_groups(r.stdout + r.stderr)
        assert len(groups) > 100, binary
        for names in groups:
            if names & KNOWN:
                assert names <= KNOWN, f"{binary}: {sorted(names - KNOWN)} spell {sorted(names & KNOWN)}"


def test_every_flag_in_runqs_command_is_refused_or_pinned_after_the_double_dash(models: dict[str, SynthModel]) -> None:
    m = open_local(models["deepseek2-q8"].path)
    gpu = GPU(0, "test GPU", 1 << 30, 1 << 30)
    machine = Machine(gpus=(gpu, replace(gpu, index=1)), ram_total_bytes=16 << 30, ram_available_bytes=16 << 30,
                      cpu=CPU(physical_cores=2))  # fmt: skip
    p = plan(machine, m.tensors, m.hparams, Request(ctx=4096))
    # Everything the command can carry at once: workers, a split, a quantized cache, no mmap, a prompt cache.
    p = replace(p, rpc=("127.0.0.1:50052",), tensor_split=(1, 1), cache_type_k="q8_0", cache_type_v="q8_0",
                load_mode="none", cache_ram_bytes=1 << 30, overrides=p.overrides)  # fmt: skip
    profile = next(x for x in load_profiles() if x.template)
    opts = ServerOptions(host="0.0.0.0", api_key_file="/k")
    argv = build_argv(p, launch_for("llama-server", "m.gguf", profile, server=opts))
    flags = {a for a in argv[1:] if re.match(r"--?[a-zA-Z]", a)}
    assert {
        "--host",
        "--port",
        "--api-key-file",
        "-m",
        "--rpc",
        "-ts",
        "-ctk",
        "-cram",
        "--chat-template-file",
    } <= flags
    assert {llama_flag(f) for f in flags} - KNOWN <= PASSED_THROUGH, sorted(flags - KNOWN - PASSED_THROUGH)
    key = build_argv(p, launch_for("llama-server", "m.gguf", None, server=replace(opts, api_key_file=None,
                                                                                   api_key="k")))  # fmt: skip
    assert "--api-key" in key and "--api-key" in KNOWN
