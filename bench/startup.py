"""Print the median wall time of `runq --help` (and of `runq inspect` on a generated model).

    .venv/bin/python bench/startup.py [--runs 15]

A figure, not a test: startup must stay instant because heavy modules are imported lazily.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    runq = [sys.executable, "-m", "launcher"]
    baseline = median_seconds([sys.executable, "-c", "pass"], runs)
    print(f"python -c pass          {baseline * 1000:7.1f} ms (interpreter start, for reference)")
    print(f"runq --help             {median_seconds([*runq, '--help'], runs) * 1000:7.1f} ms")
    print(f"runq --version          {median_seconds([*runq, '--version'], runs) * 1000:7.1f} ms")
    from launcher.measure.synth import SynthSpec, write_model

    with tempfile.TemporaryDirectory() as d:
        m = write_model(SynthSpec(n_layer=8), Path(d) / "m.gguf", shards=3)
        print(f"runq inspect (3 shards) {median_seconds([*runq, 'inspect', str(m.path)], runs) * 1000:7.1f} ms")
    print(f"median of {runs} runs each")


if __name__ == "__main__":
    main()
