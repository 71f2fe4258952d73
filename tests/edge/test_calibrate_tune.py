"""`runq calibrate` and `runq tune` with the real llama-bench (CPU build) on generated models.

Small on purpose (2 shared cores): one calibration per test run, tune with -p 64 -n 16 and one repetition.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher.llama.build import Build
from launcher.machine import speed
from launcher.measure import calibrate as calibration
from launcher.measure import tune
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from tests.helpers import RUNQ_CMD, own_cache, runq_main, spawn, wait_until

TINY = SynthSpec(arch="qwen3moe", n_layer=4, n_embd=256, n_ff_exp=128, n_expert=8, n_head=4, n_head_kv=2, head_dim=64)
FAST = ["--pp", "64", "--tg", "16", "-r", "1", "--depth", "0"]  # depth: tested on its own (glm below)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, llama_build: Build) -> Path:
    return own_cache(tmp_path_factory.mktemp("tune-cache"), llama_build)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SynthModel:
    return write_model(TINY, tmp_path_factory.mktemp("tune-models") / "tiny.gguf")


@pytest.fixture(scope="module")
def calibrated(cache: Path) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNQ_CACHE_DIR", str(cache))
        mp.setenv("RUNQ_CALIBRATE_PASSES", "1")  # one pass over the models is enough to test with
        t0 = time.monotonic()
        code, out, err = runq_main("calibrate", "--json")
        took = time.monotonic() - t0
    assert code == 0, err
    data = json.loads(out)
    data["wall_s"] = took
    return data


def test_calibrate_measures_each_thread_count_and_plans_say_so(
    calibrated: dict[str, Any], cache: Path, tiny: SynthModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.machine.probe import probe

    monkeypatch.setenv("RUNQ_CACHE_DIR", str(cache))
    cores = probe(cpu_details=False).cores
    measured = [p["threads"] for p in calibrated["cpu"]]
    if calibrated["provisional"]:  # a busy machine: the budget ran out, or a thread count measured only noise
        assert measured and set(measured) <= set(calibration.thread_counts(cores))
    else:
        assert measured == calibration.thread_counts(cores)
    assert all(1e8 < p["bandwidth_bytes_s"] < 1e13 for p in calibrated["cpu"])
    # At most a minute of measuring (the first calibration on a machine also generates its models).
    assert calibrated["took_s"] - calibrated["generating_s"] <= 61 and calibrated["gpus"] == []  # no GPU here
    assert calibrated["fingerprint"]["build"] and calibrated["fingerprint"]["cpu"]
    # Measured under load (other processes' share of the CPUs, or repetitions far apart): provisional, and said.
    loaded = calibrated["busy"] > speed.BUSY_SHARE or calibrated["spread"] > speed.NOISY_SPREAD
    assert 0 <= calibrated["busy"] <= 1 and bool(calibrated["provisional"]) >= loaded, calibrated

    code, out, _ = runq_main("plan", str(tiny.path))
    assert code == 0
    assert f"speed: calibrated on this machine, {calibrated['calibrated_at'][:10]}" in out
    assert ("(provisional: " in out) == bool(calibrated["provisional"])
    code, out, _ = runq_main("plan", str(tiny.path), "--gpu", "none")  # a described machine: reference constants
    assert code == 0 and "speed: reference constants" in out

    # A changed machine (or build) does not use these constants: it is calibrated again.
    machine = probe(cpu_details=False)
    key = calibrated["fingerprint"]["build"]
    assert calibration.load(machine, key) is not None
    assert calibration.load(replace(machine, ram_total_bytes=machine.ram_total_bytes * 2), key) is None
    assert calibration.load(machine, "another-build") is None


def test_tune_measures_llama_cpp_default_and_never_picks_slower(
    calibrated: dict[str, Any], cache: Path, tiny: SynthModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(cache))
    code, out, err = runq_main("tune", str(tiny.path), "--for", "decode", "--budget", "5m", "--json", *FAST)
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"baseline", "chosen", "candidates", "depth"} and data["baseline"] == tune.BASELINE
    for c in data["candidates"]:
        assert set(c) == {"label", "argv", "pp_tps", "tg_tps", "pp_spread", "tg_spread", "busy", "peak_bytes",
                          "error", "depth", "via", "tg_tps_empty"}  # fmt: skip
        assert c["argv"][0].endswith("llama-bench") and 0 <= c["busy"] <= 1 and c["tg_spread"] >= 0
    by_label = {c["label"]: c for c in data["candidates"]}
    base = by_label[tune.BASELINE]
    assert base["error"] is None and base["tg_tps"] > 0 and base["peak_bytes"]["CPU"] > 0
    assert "-t" not in base["argv"] and "-ub" not in base["argv"]  # llama.cpp decides
    chosen = by_label[data["chosen"]]
    assert chosen["tg_tps"] >= base["tg_tps"]
    ours = [c for c in data["candidates"] if c["label"] != tune.BASELINE]
    assert {"-ub" in c["argv"] for c in ours} == {True} and len(ours) >= 4
    # ubatch does not change decode, and without a GPU it cannot move a layer: not searched for decode here.
    assert {c["argv"][c["argv"].index("-ub") + 1] for c in ours} == {"512"}

    # run and plan use the result; the machine's constants were refitted from the measurements.
    code, out, _ = runq_main("run", str(tiny.path), "--dry-run", "--server")
    assert code == 0 and "tuned " in out and f"({data['chosen']}, for decode)" in out
    code, out, _ = runq_main("plan", str(tiny.path))
    assert code == 0 and "Measured: tuned " in out
    # Its decode measurements joined this machine's calibration record (a model this small decodes from the
    # CPU's caches, so the fit leaves it out: launcher/speed.py, tested in test_tune.py).
    from launcher.machine.probe import probe

    rec = calibration.load_record(calibration.fingerprint(probe(cpu_details=False), calibrated["fingerprint"]["build"]))
    assert rec is not None
    assert {o["source"] for o in rec["observations"]} == {"calibrate", f"tune:{tiny.path.resolve()}"}
    code, out, _ = runq_main("service", "render", str(tiny.path))
    exec_start = next(line for line in out.splitlines() if line.startswith("ExecStart="))
    knobs = re.fullmatch(r"runq t(\d+) ub(\d+) fa-(\w+) (\w+)(?: [+-]\d+ layers)?", data["chosen"])
    if knobs is None:  # llama.cpp's default won: no placement, batch or thread flags
        assert data["chosen"] == tune.BASELINE and " -t " not in exec_start and " -ub " not in exec_start
    else:
        assert f" -t {knobs[1]} " in exec_start and f" -ub {knobs[2]} " in exec_start
        assert (f" -fa {knobs[3]} " in exec_start) == (knobs[3] != "auto")


def _bench_children(pid: int) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["name", "ppid"]) if p.info["name"] == "llama-bench" and p.info["ppid"] == pid
    ]


def test_first_tune_calibrates_and_ctrl_c_keeps_what_was_measured(
    llama_build: Build, tiny: SynthModel, runq_home: Path, tmp_path: Path
) -> None:
    fresh = own_cache(tmp_path / "fresh-cache", llama_build)  # this machine, never calibrated
    env = {**os.environ, "RUNQ_CACHE_DIR": str(fresh), "RUNQ_AUTO_CALIBRATE": "1", "RUNQ_CALIBRATE_PASSES": "1"}
    argv = [*RUNQ_CMD, "tune", str(tiny.path), "--budget", "5m", *FAST]
    proc = spawn(argv, env)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "[3/" in line:  # baseline and runq's plan are measured; Ctrl-C once the third one's llama-bench runs
            wait_until(lambda: _bench_children(proc.pid), "the third candidate's llama-bench")
            proc.send_signal(signal.SIGINT)
            break
    out, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "Stopped early: interrupted (Ctrl-C)" in out and tune.BASELINE in out
    said = "".join(lines)
    assert "Calibrating this machine once: at most 60 s decoding 4 generated models" in said, said
    assert "--no-calibrate skips it" in said and re.search(r"calibrated in \d+ s", said), said
    assert list((fresh / "calibration").glob("*.json"))
    assert not _bench_children(proc.pid)
    assert list((runq_home / "config" / "tuned").glob("*.json")), "what was measured is saved"


def test_tune_budget_bounds_the_run(cache: Path, tiny: SynthModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(cache))
    t0 = time.monotonic()
    budget = 6  # room for the baseline (about 1 s idle) on a loaded machine
    code, out, err = runq_main("tune", str(tiny.path), "--budget", f"{budget}s", "--json", *FAST)
    took = time.monotonic() - t0
    data = json.loads(out)
    assert code == 0, err
    assert data["candidates"][0]["label"] == tune.BASELINE and data["candidates"][0]["error"] is None
    assert took < budget + 6  # the candidate running when the budget ran out was stopped (the rest: saving, refit)
    assert took < budget or len(data["candidates"]) < 8  # 8: the whole search on 2 cores


def test_tune_needs_a_build_and_a_duration(tiny: SynthModel, tmp_path: Path) -> None:
    code, _, err = runq_main("tune", str(tiny.path), "--llama-bin", str(tmp_path))
    assert code == 1 and "Error: tune runs llama-bench" in err and "Hint: run `runq build`" in err
    code, _, err = runq_main("tune", str(tiny.path), "--budget", "10")
    assert code == 2 and "expected a duration" in err
    # --gpu-limit is checked before anything slow: a bad size, or no GPU to limit (this machine has none).
    code, _, err = runq_main("tune", str(tiny.path), "--gpu-limit", "8", "--llama-bin", str(tmp_path))
    assert code == 2 and "no unit" in err
    code, _, err = runq_main("tune", str(tiny.path), "--gpu-limit", "0GiB", "--llama-bin", str(tmp_path))
    assert code == 2 and "more than zero" in err
    code, _, err = runq_main("tune", str(tiny.path), "--gpu-limit", "8GiB", "--llama-bin", str(tmp_path))
    assert code == 2 and "no GPU runq can see" in err


def test_no_calibrate_skips_the_first_calibration_and_bench_reports_its_repetitions(
    llama_build: Build, tiny: SynthModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-calibrate: a first tune (or run) on a machine never calibrated does not calibrate; what llama-bench
    measured comes with each repetition's spread and how busy the machine was."""
    fresh = own_cache(tmp_path / "fresh-cache", llama_build)
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(fresh))
    monkeypatch.setenv("RUNQ_AUTO_CALIBRATE", "1")
    code, out, err = runq_main("tune", str(tiny.path), "--no-calibrate", "--budget", "20s", "--json", "--pp", "64",
                          "--tg", "16", "-r", "3")  # fmt: skip
    assert code == 0, err
    assert "Calibrating" not in err and not list((fresh / "calibration").glob("*.json"))
    base = json.loads(out)["candidates"][0]
    assert base["label"] == tune.BASELINE and base["error"] is None and base["tg_spread"] >= 0
    from launcher.llama import bench

    res = bench.run([str(bench.binary(llama_build.path / "bin")), "-m", str(tiny.path), "-p", "0", "-n", "8",
                     "-r", "3", "-t", "1", "-o", "jsonl"], timeout_s=120)  # fmt: skip
    assert res.error is None and len(res.samples(prompt=False)) == 3 and 0 <= res.busy_share <= 1


def test_a_provisional_calibration_is_flagged_in_the_plan(
    llama_build: Build, tiny: SynthModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A calibration taken under load (as stored) is flagged in `runq plan`'s speed line, and its constants stay
    physical (no zero per-layer cost)."""
    from launcher.machine.probe import probe
    from launcher.machine.speed import Observation

    fresh = own_cache(tmp_path / "fresh-cache", llama_build)
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(fresh))
    machine = probe(cpu_details=False)
    fp = calibration.fingerprint(machine, llama_build.key)
    obs = [Observation(1, 4, 184_902_880, 17.92, busy=0.93, spread=0.4)]  # what this machine measured, loaded
    rec = {"fingerprint": fp, "calibrated_at": "2026-12-02T19:04:25Z", "incomplete": None,
           "observations": [calibration._obs_json(o) for o in obs]}  # fmt: skip
    calibration._write(fp, rec)
    code, out, err = runq_main("plan", str(tiny.path))
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("  speed: "))
    flagged = "(provisional: taken under load, other processes used 93% of the CPUs and its repetitions were up to"
    assert line.startswith(f"  speed: calibrated on this machine, 2026-12-02 {flagged} 40% apart"), line
    model = calibration.load(machine, llama_build.key)
    assert model is not None and model.cpu[0].layer_s >= speed.MIN_LAYER_S


GLM = SynthSpec(arch="glm4moe", n_layer=6, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16, n_nextn=1)


def test_tune_measures_at_depth_and_takes_mtp_drafting_only_when_faster(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generated glm4moe with a NextN layer: every candidate is measured with 256 tokens of context filled first
    (llama-bench -d; llama-server: a 256 + pp-token prompt), and MTP drafting is measured through llama-server
    against the same candidate without it, and chosen only if it measured faster (random weights: almost no draft
    is accepted, so whichever way it goes is what was measured)."""
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(cache))
    glm = write_model(GLM, tmp_path / "glm.gguf")
    code, out, err = runq_main("tune", str(glm.path), "--for", "decode", "--budget", "5m", "--json", "--depth", "256",
                          "--no-calibrate", "--pp", "64", "--tg", "16", "-r", "2")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["depth"] == 256 and {c["depth"] for c in data["candidates"]} == {256}
    bench = [c for c in data["candidates"] if c["via"] == "llama-bench"]
    assert bench and all(c["argv"][c["argv"].index("-d") + 1] == "0,256" for c in bench)  # and an empty cache
    assert all(c["tg_tps_empty"] > 0 for c in bench if c["error"] is None)
    served = [c for c in data["candidates"] if c["via"] == "llama-server"]
    assert len(served) == 2 and all(c["error"] is None and c["tg_tps"] > 0 for c in served), served
    plain, drafted = served
    assert drafted["label"] == plain["label"] + " +mtp" and "--spec-type" not in plain["argv"]
    assert drafted["argv"][drafted["argv"].index("--spec-type") + 1] == "draft-mtp"
    assert plain["label"] in {c["label"] for c in bench}  # the llama-bench winner, measured again by the server
    faster = tune.beats(_measured(drafted), _measured(plain), "decode")
    assert data["chosen"] == (drafted["label"] if faster else plain["label"])
    # What was chosen is what runs: with MTP, --spec-type and the NextN layer's memory in the plan.
    code, out, _ = runq_main("run", str(glm.path), "--dry-run", "--server")
    assert code == 0 and ("--spec-type draft-mtp" in out) == faster and "at 256 tokens of context" in out


def _measured(c: dict[str, Any]) -> tune.Measured:
    """A JSON row back as a measurement (its spreads as the samples' range around the mean)."""
    knobs = tune.Knobs(1, 512, spec="draft-mtp" if c["label"].endswith("+mtp") else "none",
                       baseline=c["label"].startswith(tune.BASELINE))  # fmt: skip
    tg, s = c["tg_tps"], c["tg_spread"]
    return tune.Measured(knobs, tuple(c["argv"]), c["pp_tps"], tg, tg_samples=(tg * (1 - s / 2), tg * (1 + s / 2)),
                         via=c["via"])  # fmt: skip
