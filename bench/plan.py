"""Print planning times: one 1,086-tensor model (target: under 100 ms), and every quant of DeepSeek-V3.1.

.venv/bin/python bench/plan.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import require_profile
from launcher.catalog.sources import profile_sources
from launcher.machine.spec import MachineSpec
from launcher.plan.choose import choose
from launcher.plan.place import plan
from launcher.plan.types import Request

MACHINES = {
    "1x24GiB + 256GiB": {"gpus": [{"memory": "24GiB"}], "ram": "256GiB", "cores": 16},
    "1x80GiB + 512GiB": {"gpus": [{"memory": "80GiB"}], "ram": "512GiB", "cores": 32},
    "2x24GiB + 256GiB": {"gpus": [{"memory": "24GiB"}, {"memory": "24GiB"}], "ram": "256GiB", "cores": 16},
    "CPU only, 512GiB": {"ram": "512GiB", "cores": 32},
}


def median_ms(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    profile = require_profile("deepseek-v3.1")
    q = profile.quant("UD-Q2_K_XL")
    est = estimate(profile, q)
    req = Request(ctx=profile.default_ctx)
    print(f"tensors in one DeepSeek-V3.1 quant: {len(est.tensors)}")
    print(f"estimate tensors for one quant          {median_ms(lambda: estimate(profile, q), runs):8.1f} ms")
    for label, spec in MACHINES.items():
        m = MachineSpec.model_validate(spec).to_machine()
        one = median_ms(lambda m=m: plan(m, est.tensors, est.hparams, req), runs)  # type: ignore[misc]
        sources = profile_sources(profile)
        every = median_ms(lambda m=m, s=sources: choose(profile.name, m, s, req), max(3, runs // 3))  # type: ignore[misc]
        print(f"{label:<18} one quant {one:7.1f} ms   all {len(sources)} quants (choose) {every:8.1f} ms")
    print(f"median of {runs} runs")


if __name__ == "__main__":
    main()
