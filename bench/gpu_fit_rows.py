"""Record llama.cpp's CUDA memory projections for real model shapes: the data behind memory.py's CUDA model.

Two steps, because the GPU machine has no network:

    .venv/bin/python bench/gpu_fit_rows.py --prepare   # here: llama.cpp source + the shapes' headers -> .device/
    python3 bench/gpu_fit_rows.py                       # on the NVIDIA machine (stdlib only, about 5-8 min)

The second step builds `llama-fit-params` with CUDA for this GPU's compute capability only (from
.device/llama.cpp.tar.xz), writes header-only sparse replicas of one shape per architecture runq knows
(.device/shapes/, made by --prepare from bench/shapes.py: DeepSeek MLA, DSA and V4, GLM, gpt-oss iSWA/MXFP4,
MiniMax, the Qwen3-235B GQA shape, the Qwen3.5/Next hybrids), and records `llama-fit-params -fitp on` device
rows with every layer on the GPU at -c 4096/16384/32768/65536 x -ub 512/2048 (-fa auto; -fa on and off at
32768), and the same with the routed experts on the CPU (-cmoe: op offload copies them in). The rows, with
the date, GPU and build, go to bench/gpu_fit_rows.json; commit that file. bench/truth.py and
tests/test_llama_sizes.py compare memory.py's CUDA compute model with every row. `--llama-bin DIR` skips the
build (any llama.cpp; on a CPU build it records Host rows, which checks the pipeline, not the GPU model).
"""

from __future__ import annotations

import argparse
import base64
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher.hub.replica import HeaderFile, write_replica  # noqa: E402
from launcher.plan.projection import parse_fit_print  # noqa: E402  (stdlib-only imports from here on)

CARRY = ROOT / ".device"
SOURCE_TAR = CARRY / "llama.cpp.tar.xz"
SHAPES = CARRY / "shapes"
OUT = Path(__file__).with_name("gpu_fit_rows.json")
CONTEXTS = (4096, 16384, 32768, 65536)
UBATCHES = (512, 2048)
FLASH = ("auto", "on", "off")
# Not needed to build llama-fit-params: left out of the carried source (it must stay small).
SKIP = re.compile(
    r"^llama\.cpp/(\.git|objects|models|docs|examples|benches|conversion|gguf-py|scripts|pocs|app|index|ci|"
    r"ggml/src/ggml-(vulkan|sycl|metal|opencl|hexagon|cann|musa|hip|et|webgpu|zdnn|kompute))(/|$)"
)


def prepare(source: Path) -> None:
    """Here, with network and runq's venv: carry the llama.cpp source and the shapes' headers."""
    import tempfile

    from bench.shapes import shapes
    from launcher.hub.replica import local_header_files

    CARRY.mkdir(exist_ok=True)
    with tarfile.open(SOURCE_TAR, "w:xz") as tar:
        tar.add(source, arcname="llama.cpp", filter=lambda ti: None if SKIP.match(ti.name) else ti)
    SHAPES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        seen: set[str] = set()
        for s in shapes(Path(tmp)):
            if s.arch in seen:  # one shape per architecture keeps the GPU run within minutes
                continue
            seen.add(s.arch)
            files = local_header_files(s.first)
            doc = {"name": s.name, "arch": s.arch, "files": [
                {"name": f.name, "size": f.size, "header": base64.b64encode(lzma.compress(f.header)).decode()}
                for f in files
            ]}  # fmt: skip
            (SHAPES / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', s.name)}.json").write_text(json.dumps(doc))
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB (source + {len(list(SHAPES.glob('*.json')))} shapes)")


def cuda_arch() -> tuple[str, str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[0]  # fmt: skip
    name, cap = (x.strip() for x in out.split(","))
    return name, cap.replace(".", "")


def build(work: Path, arch: str, targets: tuple[str, ...] = ("llama-fit-params",)) -> Path:
    """llama-fit-params (or `targets`) with CUDA for one architecture (282 s for two targets on 16 cores,
    llama-cpp.md; 240 s for llama-fit-params on the H200 machine, 2026-11-27)."""
    src = work / "llama.cpp"
    if not src.is_dir():
        with tarfile.open(SOURCE_TAR) as tar:
            tar.extractall(work, filter="data")
    tree = work / "build"
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"]  # fmt: skip
    subprocess.run(["cmake", "-S", str(src), "-B", str(tree), *options], check=True, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 4)
    subprocess.run(["cmake", "--build", str(tree), "-j", jobs, "--target", *targets], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return tree / "bin"


def replicas(work: Path) -> list[tuple[str, str, Path]]:
    out = []
    for doc_path in sorted(SHAPES.glob("*.json")):
        doc = json.loads(doc_path.read_text())
        files = [HeaderFile(f["name"], lzma.decompress(base64.b64decode(f["header"])), f["size"]) for f in doc["files"]]
        out.append((doc["name"], doc["arch"], write_replica(files, work / "replicas" / doc_path.stem)))
    return out


def configs() -> list[tuple[int, int, str, str]]:
    # fa auto (what runq plans for) everywhere; on/off at 32k to see both paths; experts on the CPU (op offload).
    out = [(c, u, "auto", "gpu") for c in CONTEXTS for u in UBATCHES]
    out += [(32768, u, fa, "gpu") for u in UBATCHES for fa in FLASH if fa != "auto"]
    return out + [(c, u, "auto", "cpu") for c in CONTEXTS for u in UBATCHES]


def row_for(binary: Path, shape: str, arch: str, model: Path, config: tuple[int, int, str, str]) -> dict[str, object]:
    ctx, ub, fa, experts = config
    flags = ["-c", str(ctx), "-ub", str(ub), "-b", str(max(ub, 2048)), "-fa", fa, "-ngl", "999"]
    flags += ["-cmoe"] if experts == "cpu" else []
    r = subprocess.run([str(binary), "-m", str(model), *flags, "-fitp", "on"], capture_output=True, text=True,
                       timeout=120, check=False)  # fmt: skip
    row: dict[str, object] = {"shape": shape, "arch": arch, "ctx": ctx, "ubatch": ub, "fa": fa, "experts": experts}
    try:
        devices = parse_fit_print(r.stdout) if r.returncode == 0 else ()
    except ValueError:
        devices = ()
    if not devices:
        row["error"] = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return row
    row["devices"] = {d.name: [d.model_bytes >> 20, d.context_bytes >> 20, d.compute_bytes >> 20] for d in devices}
    gpu = next((d for d in devices if d.name != "CPU"), None)
    row["compute_mib"] = (gpu.compute_bytes >> 20) if gpu else None
    return row


def record(bin_dir: Path | None, out: Path, deadline_s: float | None = None) -> None:
    """Every config for every shape, config by config (so rows cut short by --deadline cover every shape)."""
    t0 = time.monotonic()
    work = CARRY / "work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        gpu, arch = cuda_arch()
    except (OSError, subprocess.CalledProcessError):
        gpu, arch = "none (no nvidia-smi)", ""
    if bin_dir is None:
        bin_dir = build(work, arch)
        print(f"built llama-fit-params for sm_{arch} in {time.monotonic() - t0:.0f} s", flush=True)
    binary = bin_dir / "llama-fit-params"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    commit = re.search(r"commit ([0-9a-f]{7,})|\(([0-9a-f]{7,})\)", version.stdout + version.stderr)
    shapes = replicas(work)
    rows = []
    stopped = ""
    for config in configs():
        if deadline_s is not None and time.monotonic() - t0 > deadline_s:
            stopped = f" (stopped at --deadline {deadline_s:.0f} s)"
            break
        rows += [row_for(binary, shape, arch_name, model, config) for shape, arch_name, model in shapes]
        print(f"{config}: {len(rows)} rows so far ({time.monotonic() - t0:.0f} s)", flush=True)
    doc = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu, "cuda_arch": arch,
           "build": (commit.group(1) or commit.group(2))[:7] if commit else "unknown", "rows": rows}  # fmt: skip
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out}: {len(rows)} rows, {sum('error' in r for r in rows)} errors, {time.monotonic() - t0:.0f} s{stopped}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="carry the source and the shapes' headers to .device/")
    ap.add_argument("--source", type=Path, help="llama.cpp source for --prepare (default: runq's cached PyPI source)")
    ap.add_argument("--llama-bin", type=Path, help="use this llama.cpp instead of building one")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--deadline", type=float, metavar="S", help="stop starting configs after S seconds")
    args = ap.parse_args()
    if args.prepare:
        from launcher.paths import cache_dir

        default = next(iter(sorted((cache_dir() / "src").glob("*/llama.cpp"))), None)
        source = args.source or default
        if source is None:
            sys.exit("no llama.cpp source: give --source DIR (or run `runq build --source pypi` once)")
        prepare(source)
    else:
        if not SHAPES.is_dir():
            sys.exit("nothing carried: run `bench/gpu_fit_rows.py --prepare` first (on a machine with network)")
        record(args.llama_bin, args.out, args.deadline)


if __name__ == "__main__":
    main()
