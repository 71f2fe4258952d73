"""llama.cpp's own default against runq's untuned and tuned plans, on the machine it runs on.

.venv/bin/python bench/vs_default.py [--depth N] [--rounds N] [-r N] [--budget 4m] [--gpu-limit SIZE] [--llama-bin DIR]

For generated models (qwen3moe and deepseek2, about 0.6 GiB each; with --gpu-limit they need expert offload), three
rows each, measured by llama-bench at an empty cache and at --depth tokens of context (-d 0,N), decode and prompt:
- llama.cpp default: llama-bench with no flags (its defaults are llama-server's: threads, ubatch 512, mmap, flash
  attention auto); with a GPU, llama.cpp's own fit at the plan's context (llama-fit-params' answer as -ngl/-ot),
  under --gpu-limit with the same room (-fitt grows by the memory above the limit);
- runq untuned: `runq plan`'s placement, threads, ubatch, load mode, as a user gets it (this machine calibrated
  first, as the first real run does);
- runq tuned: what `runq tune --for balanced` chose (its own search, at the same depth).
The rows run interleaved, --rounds times; each figure is the median of the rounds, and the table says how busy the
machine was. Everything runs in a temporary runq home (your calibration and tune records are not touched); the
models are kept in --dir. Exit 1 when runq's untuned plan is slower than llama.cpp's default beyond the noise
(decode or prompt, at either depth): then the plan is what needs fixing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.measure.synth import SynthSpec

MODELS = {
    "qwen3moe": SynthSpec(arch="qwen3moe", n_layer=12, n_embd=1024, n_ff_exp=512, n_expert=32, n_expert_used=4,
                          n_head=8, n_head_kv=2, head_dim=128, seed=41),
    "deepseek2": SynthSpec(arch="deepseek2", n_layer=12, n_dense_lead=1, n_embd=1024, n_ff=2048, n_ff_exp=512,
                           n_expert=32, n_expert_used=4, n_head=8, q_lora_rank=256, kv_lora_rank=256, qk_nope_dim=64,
                           qk_rope_dim=32, v_head_dim=64, seed=42),
}  # fmt: skip
ROWS = ("llama.cpp default", "runq untuned", "runq tuned")


def _home(tmp: Path, build_dir: Path) -> dict[str, str]:
    """A runq home of its own that sees the build (and shares the generated calibration models)."""
    cache = tmp / "cache"
    (cache / "builds").mkdir(parents=True)
    (cache / "builds" / build_dir.name).symlink_to(build_dir)
    shared = build_dir.parent.parent / "calibration" / "models"
    if shared.is_dir():
        (cache / "calibration").mkdir()
        (cache / "calibration" / "models").symlink_to(shared)
    return {"RUNQ_HOME": str(tmp / "home"), "RUNQ_CACHE_DIR": str(cache)}


def _runq(env: dict[str, str], *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", *argv], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def _rows(env: dict[str, str], model: Path, args: argparse.Namespace, bench: list[str]) -> dict[str, list[str]]:
    """Each row's llama-bench command (without -d/-r, added per round)."""
    from launcher.cli.common import plan_for
    from launcher.cli.parser import build_parser
    from launcher.llama.argv import bench_argv
    from launcher.llama.binaries import binaries_here
    from launcher.machine.probe import probe
    from launcher.machine.spec import limit_gpus
    from launcher.units import parse_size

    os.environ.update(env)
    limit = parse_size(args.gpu_limit, what="--gpu-limit") if args.gpu_limit else None
    cli = ["plan", str(model), "--ctx", str(args.ctx), *(["--llama-bin", args.llama_bin] if args.llama_bin else [])]
    machine = probe(cpu_details=False)
    planned, _ = plan_for(build_parser().parse_args(cli), server=True,
                          machine=limit_gpus(machine, limit) if limit else machine, tuned=False)  # fmt: skip
    common = {"pp": args.pp, "tg": args.tg, "reps": 1}
    rows = {"runq untuned": bench_argv(bench, str(model), planned.plan, **common)}
    fit_target = 1024 + (max(max(0, g.free_bytes - limit) for g in machine.gpus) >> 20 if limit else 0)
    from launcher.cli.tune_steps import baseline_flags

    found = binaries_here(args.llama_bin)
    flags = baseline_flags(found, str(model), planned.plan, len(machine.gpus), fit_target)
    rows["llama.cpp default"] = bench_argv(bench, str(model), None, **common, gpus=bool(machine.gpus),
                                           fit_target_mib=fit_target, baseline_flags=flags)  # fmt: skip
    tune = ["tune", str(model), "--for", "balanced", "--budget", args.budget, "--ctx", str(args.ctx), "--json",
            "--depth", str(args.depth), "--pp", str(args.pp), "--tg", str(args.tg), "-r", "2",
            "--no-calibrate"]  # fmt: skip
    tune += [*(["--gpu-limit", args.gpu_limit] if args.gpu_limit else [])]
    tune += [*(["--llama-bin", args.llama_bin] if args.llama_bin else [])]
    r = _runq(env, *tune, timeout=_seconds(args.budget) + 300)
    if r.returncode != 0:
        raise SystemExit(f"runq tune failed: {r.stderr[-800:]}")
    data = json.loads(r.stdout)
    chosen = next(c for c in data["candidates"] if c["label"] == data["chosen"])
    argv = list(chosen["argv"])
    if chosen["via"] != "llama-bench":  # MTP drafting won (llama-server): its llama-bench twin stands in
        argv = next(c["argv"] for c in data["candidates"] if c["label"] == data["chosen"].removesuffix(" +mtp"))
    rows["runq tuned"] = _strip(argv, {"-d", "-r"})
    print(f"  {model.name}: runq tune chose {data['chosen']}", file=sys.stderr)
    return rows


@functools.cache
def _bench_defaults(bench: tuple[str, ...]) -> dict[str, str]:
    """llama-bench's own defaults, from its --help ("-t, --threads <n>  (default: 2)"): asked once, not assumed."""
    import re

    from launcher.llama.capabilities import run_text

    return dict(re.findall(r"^\s+(-[a-z]+),?[^(\n]*\(default: ([^)]*)\)", run_text([*bench, "--help"]), re.M))


def _same_as_default(argv: list[str], default: list[str], bench: list[str], gpus: bool) -> bool:
    """Whether a row only spells out what llama-bench does without flags on a CPU build (then the two rows are
    the same run, and their difference is the machine's noise). -ngl is moot without a GPU; -lm auto is mmap."""
    if gpus or any(a.startswith("-") and a not in {"-m", "-p", "-n", "-r", "-o"} for a in default[len(bench) :]):
        return False
    defaults = dict(_bench_defaults(tuple(bench)))
    defaults["-lm"] = "mmap" if defaults.get("-lm") == "auto" else defaults.get("-lm", "")
    rest = argv[len(bench) :]
    pairs = dict(zip(rest[::2], rest[1::2], strict=False))
    moot = {"-m", "-p", "-n", "-r", "-o", "-ngl"}
    return all(k in moot or (k in defaults and defaults[k] == v) for k, v in pairs.items())


def _seconds(text: str) -> float:
    from launcher.cli.measure import parse_budget

    return parse_budget(text)


def _strip(argv: list[str], flags: set[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


def _measure(rows: dict[str, list[str]], depth: int, pp: int, rounds: int, reps: int, gpus: bool) -> dict[str, Any]:
    """{row: {(test, depth): [t/s per round]}} and the busiest share seen; rows interleaved every round."""
    from launcher.llama import bench as bench_run

    out: dict[str, dict[tuple[str, int], list[float]]] = {r: {} for r in rows}
    busy = 0.0
    names = list(rows)
    for i in range(rounds):
        # Each round starts with another row: no row always runs first (after tune, or on a cold page cache).
        for name in names[i % len(names) :] + names[: i % len(names)]:
            argv = rows[name]
            # One turn for every row: the same prompt length (llama-bench's -p), whatever the row's ubatch.
            cmd = [*_strip(argv, {"-p"}), "-p", str(pp), "-r", str(reps), "-d", f"0,{depth}"]
            res = bench_run.run(cmd, timeout_s=1800, gpus=gpus)
            if res.error:
                print(f"  {name}: {res.error}", file=sys.stderr)
                continue
            busy = max(busy, res.busy_share)
            for d in (0, depth):
                for test, prompt in (("pp", True), ("tg", False)):
                    v = res.tps(prompt=prompt, depth=d)
                    if v:
                        out[name].setdefault((test, d), []).append(v)
    return {"figures": out, "busy": busy}


def _table(name: str, result: dict[str, Any], depth: int, pp: int, tg: int) -> tuple[list[str], bool]:
    figs = result["figures"]
    cols = [("pp", 0), ("tg", 0), ("pp", depth), ("tg", depth)]
    labels = [f"{t}{pp if t == 'pp' else tg} @ d{d}" for t, d in cols]
    head = "".join(f"{x:>16}" for x in labels)
    lines = [f"{name:<12}{'':<18}{head}   (others used up to {100 * result['busy']:.0f}% of the CPUs)"]
    slower = False
    base = figs["llama.cpp default"]
    for row in ROWS:
        cells = []
        for col in cols:
            vals = figs[row].get(col, [])
            med = statistics.median(vals) if vals else None
            b = statistics.median(base[col]) if base.get(col) else None
            rel = f" {med / b:4.2f}x" if med and b and row != "llama.cpp default" else ""
            cells.append(f"{(f'{med:.1f}' if med else '-') + rel:>16}")
            if row == "runq untuned" and med and b and med < b * (1 - _noise(figs[row].get(col), base[col])):
                slower = True
        lines.append(f"{'':<12}{row:<18}{''.join(cells)}")
    spreads = [_spread(figs[row].get(col)) for row in ROWS for col in cols]
    lines.append(f"{'':<12}{'(rounds apart by':<18}" + "".join(
        f"{f'up to {100 * max(spreads[i::len(cols)]):.0f}%':>16}" for i in range(len(cols))) + ")")  # fmt: skip
    return lines, slower


def _spread(v: list[float] | None) -> float:
    return (max(v) - min(v)) / statistics.median(v) if v and len(v) > 1 else 0.0


def _noise(a: list[float] | None, b: list[float]) -> float:
    """How far either row's rounds were apart (relative), at least 3%: a difference within it is not a loss."""
    return max(_spread(a), _spread(b), 0.03)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", help="llama.cpp binaries (default: runq's cached build)")
    ap.add_argument("--depth", type=int, default=2048, help="the second depth, tokens (default 2048)")
    ap.add_argument("--ctx", type=int, default=8192, help="the context the plans are made for (default 8192)")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens of the timed turn (default 512)")
    ap.add_argument("--tg", type=int, default=64, help="generated tokens of the timed turn (default 64)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("-r", "--repetitions", type=int, default=2, help="llama-bench repetitions per round")
    ap.add_argument("--budget", default="4m", help="runq tune's budget per model (default 4m)")
    ap.add_argument("--gpu-limit", help="use at most SIZE of each GPU (forces expert offload on a big GPU)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"some of {','.join(MODELS)}")
    ap.add_argument("--no-calibrate", action="store_true", help="plan with the reference constants")
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "runq-bench-vs-default"))
    args = ap.parse_args()

    from launcher.llama.binaries import binaries_here
    from launcher.measure.synth import write_model

    found = binaries_here(args.llama_bin)
    if found is None or not found.has("llama-bench"):
        print("no llama.cpp build: run `runq build` or give --llama-bin", file=sys.stderr)
        return 4
    bench = found.tool("llama-bench")
    gpus = found.backend == "cuda"
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        env = _home(Path(tmp), found.bin_dir.parent)
        if not args.no_calibrate:
            print("calibrating this machine (as a first real run does)…", file=sys.stderr)
            r = _runq(env, "calibrate", *(["--llama-bin", args.llama_bin] if args.llama_bin else []), timeout=600)
            print("  " + (r.stdout.strip().splitlines() or ["(no output)"])[0], file=sys.stderr)
        load = os.getloadavg()
        out, bad = [], False
        for name in args.models.split(","):
            path = Path(args.dir) / f"{name}.gguf"
            if not path.is_file():
                write_model(MODELS[name], path)
            rows = _rows(env, path, args, bench)
            result = _measure(rows, args.depth, args.pp, args.rounds, args.repetitions, gpus)
            lines, slower = _table(name, result, args.depth, args.pp, args.tg)
            for row, argv in rows.items():  # what each row ran, beside the model and the test sizes
                flags = " ".join(_strip(argv[len(bench) :], {"-m", "-p", "-n", "-r", "-o"}))
                same = row != "llama.cpp default" and _same_as_default(argv, rows["llama.cpp default"], bench, gpus)
                note = "  (llama-bench's defaults spelled out: the same run)" if same else ""
                lines.append(f"{'':<12}  {row}: {flags or '(no flags)'}{note}")
            out += lines
            bad |= slower
        load_after = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0))
    where = f"--gpu-limit {args.gpu_limit}, " if args.gpu_limit else ""
    print(
        f"# {stamp}, {where}{args.rounds} interleaved rounds x {args.repetitions} repetitions, ctx {args.ctx}, "
        f"load {load[0]:.1f} before, {load_after[0]:.1f} after"
    )
    print("# median t/s over the rounds; x: against llama.cpp's default")
    print("\n".join(out))
    if bad:
        print("runq's untuned plan measured slower than llama.cpp's default beyond the noise: fix the plan")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
