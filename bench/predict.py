"""Print predicted vs llama-bench decode tokens/s for generated models, before and after `runq calibrate`.

.venv/bin/python bench/predict.py [--threads N] [--rounds N] [--llama-bin DIR] [--dir DIR]

Six Q8_0 models (deepseek2 and qwen3moe, about 150, 450 and 800 MiB; none of them is a calibration
model) are decoded by llama-bench at the physical core count. "reference" is the prediction from the
constants in launcher/memory.py; "calibrated" uses this machine's constants from a fresh calibration
(made in a temporary cache: yours is not touched). Generating the models takes a minute or two the
first time (kept in --dir).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from launcher.measure.synth import SynthSpec

Q = dict(arch="qwen3moe", n_expert=32, n_expert_used=4)
D = dict(arch="deepseek2", n_expert=32, n_expert_used=4, qk_nope_dim=64, qk_rope_dim=32, v_head_dim=64)
MODELS = {
    "qwen3moe-S": SynthSpec(**Q, n_layer=8, n_embd=512, n_ff_exp=384, n_head=8, n_head_kv=2, head_dim=64, seed=21),
    "qwen3moe-M": SynthSpec(**Q, n_layer=12, n_embd=768, n_ff_exp=512, n_head=8, n_head_kv=2, head_dim=96, seed=22),
    "qwen3moe-L": SynthSpec(**Q, n_layer=12, n_embd=1024, n_ff_exp=640, n_head=16, n_head_kv=4, head_dim=64, seed=23),
    "deepseek2-S": SynthSpec(**D, n_layer=8, n_embd=512, n_ff=1024, n_ff_exp=384, n_head=8, q_lora_rank=128,
                             kv_lora_rank=128, seed=24),
    "deepseek2-M": SynthSpec(**D, n_layer=12, n_embd=768, n_ff=1536, n_ff_exp=512, n_head=8, q_lora_rank=256,
                             kv_lora_rank=128, seed=25),
    "deepseek2-L": SynthSpec(**D, n_layer=12, n_embd=1024, n_ff=2048, n_ff_exp=640, n_head=16, q_lora_rank=256,
                             kv_lora_rank=256, seed=26),
}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", help="llama.cpp binaries (default: runq's cached build)")
    ap.add_argument("--threads", type=int, help="decode threads (default: the physical cores)")
    ap.add_argument("--rounds", type=int, default=1, help="calibrate-then-measure rounds (the spread over all)")
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "runq-bench-predict"))
    args = ap.parse_args()

    from launcher.cli.measure import current_build
    from launcher.machine.probe import probe
    from launcher.measure.synth import write_model

    machine = probe(cpu_details=False)
    found = current_build(machine, args.llama_bin)
    if found is None:
        print("no llama.cpp build: run `runq build` or give --llama-bin", file=sys.stderr)
        return 4
    bin_dir, key = found
    threads = args.threads or machine.cores
    paths = {}
    for name, spec in MODELS.items():
        path = Path(args.dir) / f"{name}.gguf"
        if not path.is_file():
            print(f"generating {name}…", file=sys.stderr, flush=True)
            write_model(spec, path)
        paths[name] = path

    all_ref: list[float] = []
    all_cal: list[float] = []
    for r in range(args.rounds):
        print(f"\nround {r + 1} of {args.rounds}")
        ref, cal = one_round(args, machine, bin_dir, key, threads, paths)
        all_ref += ref
        all_cal += cal
    if all_cal:
        print(f"\nover {args.rounds} round(s): reference constants {min(all_ref):+.0f}% to {max(all_ref):+.0f}%,"
              f" calibrated {min(all_cal):+.0f}% to {max(all_cal):+.0f}%")  # fmt: skip
    return 0


def one_round(args: argparse.Namespace, machine: Any, bin_dir: Path, key: str, threads: int,
              paths: dict[str, Path]) -> tuple[list[float], list[float]]:  # fmt: skip
    """Calibrate (in a temporary cache), then decode the six models: what a user would do."""
    from launcher.measure import calibrate as calibration
    from launcher.model.shards import open_local
    from launcher.plan.place import plan
    from launcher.plan.predict import bytes_per_token
    from launcher.plan.types import Request

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RUNQ_CACHE_DIR"] = cache
        t0 = time.monotonic()
        speed, _, _ = calibration.calibrate(machine, bin_dir, key, cuda=bool(machine.gpus), say=lambda _t: None)
        took = time.monotonic() - t0
    calibrated = replace(machine, speed=speed)
    # Measured the way calibration measures (launcher/calibration.py): passes, the median repetition kept.
    best, error, _ = calibration.decode_passes(bin_dir, list(paths.values()), [threads], time.monotonic() + 600)
    measured = {p: tps for (p, _t), tps in best.items()}

    print(f"{speed.label}: took {took:.0f} s; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after,"
          f" on {machine.cpu.logical_cores} logical cores")  # fmt: skip
    for p in speed.cpu:
        print(f"  {p.threads} threads: {p.bandwidth / 1e9:.1f} GB/s effective, {p.layer_s * 1e6:.0f} µs per layer")
    print(f"llama-bench tg{calibration.GEN_TOKENS}, median of {calibration.REPETITIONS} x up to"
          f" {calibration.MAX_PASSES} passes, at {threads} threads:")  # fmt: skip
    head = f"{'model':<13}{'MiB':>6}{'MB/token':>10}{'measured':>10}{'reference':>11}{'err':>7}"
    print(head + f"{'calibrated':>12}{'err':>7}")
    errs_ref, errs_cal = [], []
    for name, path in paths.items():
        m = open_local(path)
        req = Request(ctx=4096, server=False, threads=threads)
        ref = plan(machine, m.tensors, m.hparams, req)
        cal = plan(calibrated, m.tensors, m.hparams, req)
        per = sum(bytes_per_token(m.tensors, m.hparams, cal.placement).values())
        got = measured.get(str(path))
        if not got:
            print(f"{name:<13} llama-bench measured nothing ({error})")
            continue
        errs_ref.append(100 * (ref.predicted_tg_tps - got) / got)
        errs_cal.append(100 * (cal.predicted_tg_tps - got) / got)
        print(f"{name:<13}{m.file_bytes / 2**20:>6.0f}{per / 1e6:>10.1f}{got:>10.1f}{ref.predicted_tg_tps:>11.1f}"
              f"{errs_ref[-1]:>+6.0f}%{cal.predicted_tg_tps:>12.1f}{errs_cal[-1]:>+6.0f}%")  # fmt: skip
    return errs_ref, errs_cal


if __name__ == "__main__":
    sys.exit(main())
