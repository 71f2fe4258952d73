"""runq's estimate next to llama.cpp's own projection, for every architecture runq knows.

    .venv/bin/python bench/truth.py [--llama-bin DIR] [--gpu-only]

For each shape (bench/shapes.py: header-only sparse sets of real models) and a few contexts and
ubatches, prints the KV cache and compute bytes runq's memory model gives for a CPU-only plan next to
`llama-fit-params -fitp on` (CPU build, fa auto = on), with the error in %. When bench/gpu_fit_rows.json
exists (bench/gpu_fit_rows.py, run on an NVIDIA GPU), its CUDA rows are compared with memory.py's CUDA
compute model the same way. A figure, not a test: the plan itself uses llama.cpp's numbers when it can.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shapes import shapes
from launcher.llama.build import cached_builds
from launcher.model.shards import open_local
from launcher.plan import kv_cache
from launcher.plan import memory as mem
from launcher.plan.projection import parse_fit_print

CONTEXTS = (4096, 32768)
UBATCHES = (512, 2048)
MiB = 1 << 20


def fit_print(binary: Path, model: Path, flags: list[str]) -> dict[str, tuple[int, int, int]]:
    r = subprocess.run([str(binary), "-m", str(model), *flags, "-fitp", "on"], capture_output=True, text=True,
                       timeout=60, check=False)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return {x.name: (x.model_bytes, x.context_bytes, x.compute_bytes) for x in parse_fit_print(r.stdout)}


def pct(ours: int, theirs: int) -> str:
    return f"{(ours - theirs) / theirs * 100:+6.1f}%" if theirs else "   n/a"


def cpu_table(binary: Path, root: Path) -> None:
    head = f"{'shape':<34}{'ctx':>7}{'ub':>6}  {'KV runq':>9}{'llama':>9}{'err':>8}"
    print(head + f"  {'compute runq':>12}{'llama':>9}{'err':>8}")
    for s in shapes(root):
        hp = open_local(s.first).hparams
        for ctx in CONTEXTS:
            for ub in UBATCHES:
                try:
                    rows = fit_print(
                        binary, s.first, ["-c", str(ctx), "-ngl", "0", "-ub", str(ub), "-b", str(max(ub, 2048))]
                    )
                except RuntimeError as e:
                    print(f"{s.name:<34}{ctx:>7}{ub:>6}  llama.cpp failed: {e}")
                    continue
                _, kv_l, comp_l = rows["CPU"]
                kv_r = kv_cache.kv_layout(hp, ubatch=ub).bytes_for(ctx)  # sliding windows pad by ubatch
                comp_r = mem.cpu_only_compute_bytes(hp, ctx, ub)
                print(f"{s.name:<34}{ctx:>7}{ub:>6}  {kv_r // MiB:>9}{kv_l // MiB:>9}{pct(kv_r // MiB * MiB, kv_l):>8}"
                      f"  {comp_r // MiB:>12}{comp_l // MiB:>9}{pct(comp_r, comp_l):>8}")  # fmt: skip


def gpu_table(path: Path, root: Path) -> None:
    data = json.loads(path.read_text())
    print(f"\nCUDA rows from {path.name} ({data.get('gpu')}, build {data.get('build')}, {data.get('date')}):")
    print(f"{'shape':<34}{'ctx':>7}{'ub':>6}{'fa':>6}{'experts':>9}  {'compute runq':>12}{'llama':>9}{'err':>8}")
    by_name = {s.name: s for s in shapes(root)}
    errors: dict[tuple[str, str], list[float]] = {}
    for row in data["rows"]:
        s = by_name.get(row["shape"])
        if s is None or row.get("fa") != "auto":
            continue  # runq plans for fa auto (the default)
        m = open_local(s.first)
        copy = max((t.nbytes for t in m.tensors.tensors if t.is_expert), default=0) if row["experts"] == "cpu" else 0
        ours = mem.gpu_compute_bytes(m.hparams, row["ctx"], row["ubatch"], offload_copy_bytes=copy)
        theirs = row["compute_mib"] * MiB
        print(f"{row['shape']:<34}{row['ctx']:>7}{row['ubatch']:>6}{row['fa']:>6}{row['experts']:>9}"
              f"  {ours // MiB:>12}{theirs // MiB:>9}{pct(ours, theirs):>8}")  # fmt: skip
        errors.setdefault((row["arch"], row["experts"]), []).append(100 * (ours - theirs) / theirs)
    print(f"\n{'architecture':<14}{'experts':>8}  {'rows':>4}  error range (runq vs llama.cpp, fa auto)")
    for (arch, experts), e in sorted(errors.items()):
        print(f"{arch:<14}{experts:>8}  {len(e):>4}  {min(e):+.0f}% .. {max(e):+.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", type=Path, help="llama.cpp binaries (default: runq's cached build)")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA rows of gpu_fit_rows.json (no build needed)")
    args = ap.parse_args()
    rows = Path(__file__).with_name("gpu_fit_rows.json")
    if args.gpu_only:
        if not rows.is_file():
            sys.exit(f"no {rows.name}: run bench/gpu_fit_rows.py on an NVIDIA GPU first")
        with tempfile.TemporaryDirectory() as tmp:
            gpu_table(rows, Path(tmp))
        return
    bin_dir = args.llama_bin or next((b.bin_dir for b in cached_builds()), None)
    if bin_dir is None:
        sys.exit("no llama.cpp build: run `runq build` (or give --llama-bin)")
    with tempfile.TemporaryDirectory() as tmp:
        cpu_table(bin_dir / "llama-fit-params", Path(tmp))
        if rows.is_file():
            gpu_table(rows, Path(tmp))
        else:
            print(f"\n(no {rows.name} yet: run bench/gpu_fit_rows.py on an NVIDIA GPU for the CUDA rows)")


if __name__ == "__main__":
    main()
