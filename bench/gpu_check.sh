#!/usr/bin/env bash
# runq's GPU checks in one go, on a lent NVIDIA machine without network (device time is scarce: one call).
#
#   here:   .venv/bin/python bench/gpu_fit_rows.py --prepare      # llama.cpp source + shapes -> .device/
#           (optional) a CUDA build of llama.cpp packed as .device/llama-cuda-bin.tar.xz (bin/ with its .so
#           files, RPATH $ORIGIN), and runq's missing wheels for the machine's python3 in .device/whl/.
#           The 2026-11-27 build: pip's nvidia-cuda-nvcc/-runtime/-cublas/-cccl/-crt/nvvm 13.0 wheels unpacked as
#           one toolkit, -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF
#           -DGGML_AVX2=ON, a stub libcuda.so for CUDA_cuda_driver_LIBRARY (2 cores: about 30 min; 43 MB packed)
#   there:  bench/gpu_check.sh OUTDIR [SECONDS]
#
# Steps, each logged to OUTDIR and none fatal to the next: the carried build (or a CUDA build from the
# carried source when it does not run), the CUDA context llama.cpp takes (NVML's free before it, llama.cpp's own
# free after: what runq's GPU margin assumes is 512 MiB), `runq calibrate`, `runq tune` of a generated model that
# needs expert offload (--gpu-limit makes the GPU small enough), bench/vs_default.py under the same limit
# (llama.cpp's default vs runq's untuned and tuned plans at two depths), and bench/gpu_fit_rows.py in the time left.
# vs_default was added on 2026-12-02 without a GPU to run it on: untested on a GPU so far.
set -u
out=${1:?usage: bench/gpu_check.sh OUTDIR [SECONDS]}
total=${2:-540}
t0=$SECONDS
mkdir -p "$out"
: >"$out/gpu.txt"
carry=.device
export PYTHONUNBUFFERED=1 RUNQ_CACHE_DIR=/tmp/runq-cache
if compgen -G "$carry/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$carry"/whl/*.whl >>"$out/gpu.txt" 2>&1 || echo "pip install failed: see gpu.txt"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
left() { echo $((total - (SECONDS - t0))); }

# CUDA 13 runtime and cuBLAS for a carried build: the image's Python CUDA wheels hold them.
cudalib=$(find /opt /usr -name 'libcublas.so.13' -path '*nvidia*' -print -quit 2>/dev/null)
[ -n "$cudalib" ] && export LD_LIBRARY_PATH=${cudalib%/*}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The build links the CUDA driver API lazily (no libcuda at link time here): load the driver library first.
export LD_PRELOAD=libcuda.so.1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv >>"$out/gpu.txt" 2>&1
lscpu >>"$out/gpu.txt" 2>&1

bin=/tmp/llama/bin
mkdir -p /tmp/llama
if [ -f "$carry/llama-cuda-bin.tar.xz" ] && tar -xJf "$carry/llama-cuda-bin.tar.xz" -C /tmp/llama &&
    "$bin/llama-bench" --list-devices 2>&1 | tee -a "$out/gpu.txt" | grep -q CUDA0; then
    echo "carried CUDA build runs ($(left) s left)"
else
    echo "carried build missing or not running: building llama.cpp with CUDA here"
    python3 -c "
import sys; sys.path.insert(0, 'bench')
from pathlib import Path
import gpu_fit_rows as g
name, arch = g.cuda_arch()
print(g.build(Path('/tmp/llama-src'), arch, ('llama-fit-params', 'llama-bench')))" >"$out/build.log" 2>&1 ||
        echo "build failed: see build.log"
    bin=/tmp/llama-src/build/bin
    "$bin/llama-bench" --list-devices >>"$out/gpu.txt" 2>&1
    echo "built ($(left) s left)"
fi

echo "== CUDA context"
{
    echo "NVML free before llama.cpp (MiB):"
    nvidia-smi --query-gpu=index,memory.free --format=csv,noheader,nounits
    echo "llama.cpp's own free after its CUDA context:"
    "$bin/llama-fit-params" --list-devices 2>&1 | grep -E 'CUDA[0-9]+:'
} >"$out/cuda_context.txt" 2>&1
cat "$out/cuda_context.txt"

echo "== calibrate"
timeout 150 python3 -m launcher calibrate --llama-bin "$bin" >"$out/calibrate.txt" 2>&1
echo "rc=$?" >>"$out/calibrate.txt"
cat "$RUNQ_CACHE_DIR"/calibration/*.json >"$out/calibration.json" 2>/dev/null
tail -12 "$out/calibrate.txt"

echo "== tune ($(left) s left)"
model=/tmp/runq-tune/qwen3moe-2g.gguf
python3 -c "
from launcher.measure.synth import SynthSpec, write_model
write_model(SynthSpec(arch='qwen3moe', n_layer=12, n_embd=2048, n_ff_exp=768, n_expert=64, n_expert_used=8,
            n_head=16, n_head_kv=4, head_dim=128, weight_type='Q4_K', seed=31), '$model')" >"$out/tune.txt" 2>&1
budget=$(($(left) - ${RESERVE:-200}))
[ "$budget" -gt 240 ] && budget=240
if [ "$budget" -gt 30 ]; then
    {
        python3 -m launcher plan "$model" --ctx 8192 --gpu 3GiB
        timeout $((budget + 60)) python3 -m launcher tune "$model" --ctx 8192 --gpu-limit 3GiB --for balanced \
            --budget "${budget}s" --llama-bin "$bin"
        echo "rc=$?"
    } >>"$out/tune.txt" 2>&1
fi
tail -30 "$out/tune.txt"

echo "== vs_default ($(left) s left)"
vs=$(($(left) - ${RESERVE_ROWS:-120}))
[ "$vs" -gt 200 ] && vs=200
if [ "$vs" -gt 60 ]; then
    timeout "$vs" python3 bench/vs_default.py --llama-bin "$bin" --gpu-limit 3GiB --models qwen3moe --rounds 2 \
        -r 2 --depth 2048 --budget 60s --no-calibrate >"$out/vs_default.txt" 2>&1
    echo "rc=$?" >>"$out/vs_default.txt"
    tail -8 "$out/vs_default.txt"
fi

echo "== llama-fit-params rows ($(left) s left)"
rows=$(($(left) - 20))
if [ "$rows" -gt 30 ]; then
    timeout "$rows" python3 bench/gpu_fit_rows.py --llama-bin "$bin" --out "$out/gpu_fit_rows.json" \
        --deadline "$((rows - 10))" >"$out/rows.txt" 2>&1
    tail -3 "$out/rows.txt"
fi
echo "done in $((SECONDS - t0)) s"
