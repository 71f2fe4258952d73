"""One plan, every front end: the pipeline's guards (issue 21).

- With a `runq tune` record present, `runq plan` and `runq run --dry-run` print the same command, the tuned knobs
  in it (never a command line patched afterwards), and `runq serve` puts that command in the model's preset.
- `runq models`, the TUI's model list and `runq plan` agree on quant, fit badge and tokens/s, for a described
  machine and for this one once calibrated.
- `runq tune` refuses the same bad inputs as `runq plan`, with the same message, before anything slow.
"""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from launcher.llama.binaries import binaries_here
from launcher.llama.build import Build
from launcher.machine.probe import probe
from launcher.machine.speed import Observation
from launcher.measure import calibrate, store
from launcher.measure.synth import SynthModel
from launcher.measure.tune import Knobs, Measured
from launcher.pipeline.target import resolve
from tests.helpers import runq_main, session_cache


@pytest.fixture
def built(llama_build: Build, monkeypatch: pytest.MonkeyPatch) -> Build:
    """runq's own build is the build here (RUNQ_CACHE_DIR): tune records and calibrations are keyed by it."""
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(session_cache(llama_build)))
    return llama_build


def _dry_run_argv(out: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith("[dry-run] would run: "))
    return shlex.split(line.removeprefix("[dry-run] would run: "))


@pytest.mark.parametrize(
    ("knobs", "present", "absent"),
    [
        (Knobs(1, 1024, "on", "none"), {"-ub": "1024", "-t": "1", "-fa": "on", "-lm": "none"}, ()),
        (Knobs(2, 512, baseline=True), {"-c": "4096"}, ("-ngl", "-ot", "-ub", "-t", "--fit")),
    ],
    ids=["runq-knobs", "llama-default"],
)
def test_plan_and_run_print_the_same_tuned_command(
    knobs: Knobs,
    present: dict[str, str],
    absent: tuple[str, ...],
    built: Build,
    models: dict[str, SynthModel],
) -> None:
    path = str(models["qwen3moe-q8"].path)
    target = resolve(path)
    here = binaries_here()
    assert here is not None
    measured = Measured(knobs, (), pp_tps=100.0, tg_tps=50.0)
    store.save(probe(cpu_details=False), here.key, store.model_key(target), target.sources[0].name, "balanced",
               measured, [measured])  # fmt: skip

    code, out, err = runq_main("plan", path, "--ctx", "4096", "--json")
    assert code == 0, err
    planned = json.loads(out)
    assert planned["measured"] and planned["measured"].startswith("tuned ")
    code, out, err = runq_main("run", path, "--ctx", "4096", "--server", "--dry-run")
    assert code == 0, err
    assert planned["argv"] == _dry_run_argv(out)
    argv = planned["argv"]
    for flag, value in present.items():
        assert argv[argv.index(flag) + 1] == value, argv
    for flag in absent:
        assert flag not in argv, argv
    code, out, err = runq_main("plan", path, "--ctx", "4096")
    assert code == 0 and "measured fastest here" in out, out
    assert "pinned with --quant" not in out  # the user pinned nothing: one file, tuned
    # Measured on this host alone: it says nothing about a plan that spreads over a worker.
    code, out, err = runq_main("plan", path, "--ctx", "4096", "--worker", "ram=64GiB", "--json")
    assert code == 0, err
    assert json.loads(out)["measured"] is None
    # `runq serve`'s router runs the same command: the model's preset section is that argv, tuned knobs included.
    from launcher.llama.preset import section_of

    code, out, err = runq_main("serve", path, "--ctx", "4096", "--dry-run")
    assert code == 0, err
    lines = out.split("[qwen3moe-q8]\n", 1)[1].split("\n\n")[0].splitlines()
    printed = dict(x.split(" = ", 1) for x in lines if " = " in x and not x.startswith("log-file"))
    assert printed == dict(section_of("qwen3moe-q8", argv).options)


AGREE_ON = ("gpt-oss-20b", "qwen3.6-35b-a3b", "qwen3-next-80b-a3b", "deepseek-v3.1")


def _machine(flags: list[str]) -> object:
    from launcher.cli.common import resolve_machine

    ns = argparse.Namespace(gpu=None, ram=None, cores=None, machine=None, rpc=None, worker=None)
    it = iter(flags)
    for flag, value in zip(it, it, strict=True):
        if flag == "--gpu":
            ns.gpu = [value]
        else:
            setattr(ns, flag.lstrip("-"), value)
    return resolve_machine(ns)


def _agree(flags: list[str]) -> None:
    from launcher.tui.data import model_rows

    code, out, err = runq_main("models", *flags, "--json")
    assert code == 0, err
    listed = {r["name"]: r["best"] for r in json.loads(out)}
    tui = {r.key: r for r in model_rows(_machine(flags))}  # type: ignore[arg-type]
    for name in AGREE_ON:
        code, out, err = runq_main("plan", name, *flags, "--json")
        if code == 3:  # nothing fits: all three say so
            assert listed[name] is None and tui[name].fit == "does not fit", (name, listed[name])
            continue
        assert code == 0, err
        p = json.loads(out)
        best = listed[name]
        assert best is not None, name
        assert best["quant"] == p["quant"] == tui[name].best, name
        assert best["fit"] == p["fit"] == tui[name].fit, name
        assert abs(best["tokens_per_s"] - p["predicted_tg_tps"]) <= 0.051, name  # rounded to 0.1 and 0.01


@pytest.mark.parametrize("flags", [["--gpu", "24GiB", "--ram", "64GiB"], ["--gpu", "none", "--ram", "512GiB"]])
def test_models_tui_and_plan_agree_for_a_described_machine(flags: list[str]) -> None:
    _agree(flags)


def test_models_tui_and_plan_agree_once_this_machine_is_calibrated(built: Build) -> None:
    here = binaries_here()
    assert here is not None
    machine = probe(cpu_details=False)
    # A calibration of this machine (as `runq calibrate` stores it): 4 GB/s and 50 µs per layer at every thread count.
    obs = [Observation(t, n, n * 10_000_000, 1 / (n * 10_000_000 / 4e9 + n * 50e-6), (), "calibrate")
           for t in range(1, machine.cores + 1) for n in (4, 16)]  # fmt: skip
    calibrate.record(machine, here.key, obs, {"took_s": 0.0})
    code, out, _ = runq_main("plan", "gpt-oss-20b", "--json")
    assert code == 0 and json.loads(out)["speed_source"].startswith("calibrated"), out[:300]
    _agree([])


@pytest.mark.parametrize(
    "bad",
    [["--ctx", "5"], ["--ctx", "999999999999"], ["--quant", "Q9_9"]],
    ids=["ctx-too-small", "ctx-too-large", "quant-on-a-file"],
)
def test_tune_refuses_what_plan_refuses(bad: list[str], built: Build, models: dict[str, SynthModel]) -> None:
    path = str(models["qwen3moe-q8"].path)
    code_p, _, err_p = runq_main("plan", path, *bad)
    code_t, _, err_t = runq_main("tune", path, *bad)
    assert code_p == code_t == 2, (err_p, err_t)
    assert err_p.splitlines()[0] == err_t.splitlines()[0] and err_p.startswith("Error: "), (err_p, err_t)


def test_tune_refuses_a_bad_context_of_a_catalog_model(built: Build) -> None:
    code, _, err = runq_main("tune", "deepseek-v3.1", "--ctx", "5")
    assert code == 2 and err.startswith("Error: --ctx 5: too small"), err
