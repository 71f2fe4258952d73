"""The pure parts of calibrate and tune: fitting speed constants, the candidate search, choosing, commands."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from launcher.cli.measure import parse_budget
from launcher.errors import UsageError
from launcher.llama.argv import bench_argv, plan_flags
from launcher.machine import speed
from launcher.machine.speed import CpuPoint, Observation, SpeedModel
from launcher.measure import tune
from launcher.measure.tune import Knobs, Measured, Space
from launcher.plan.place import plan
from launcher.plan.predict import bytes_per_token, predict_tg
from launcher.plan.types import Request


def _obs(threads: int, n_layer: int, nbytes: int, bw: float, layer_s: float, src: str = "calibrate") -> Observation:
    return Observation(threads, n_layer, nbytes, 1.0 / (nbytes / bw + n_layer * layer_s), source=src)


def test_fit_recovers_bandwidth_and_layer_cost_per_thread_count() -> None:
    obs = [
        _obs(1, 6, 80_000_000, 9e9, 40e-6),
        _obs(1, 16, 30_000_000, 9e9, 40e-6),
        _obs(2, 6, 80_000_000, 15e9, 60e-6),
        _obs(2, 16, 30_000_000, 15e9, 60e-6),
    ]
    model = speed.fit(obs, calibrated_at="2026-11-27T12:00:00Z")
    assert model is not None
    p1, p2 = model.cpu
    assert (p1.threads, p2.threads) == (1, 2)
    assert p1.bandwidth == pytest.approx(9e9, rel=1e-6) and p1.layer_s == pytest.approx(40e-6, rel=1e-6)
    assert p2.bandwidth == pytest.approx(15e9, rel=1e-6) and p2.layer_s == pytest.approx(60e-6, rel=1e-6)
    assert model.label == "calibrated on this machine, 2026-11-27"
    # A tune run adds a point; the label says the constants were refitted from it.
    more = speed.fit([*obs, _obs(2, 40, 500_000_000, 15e9, 60e-6, "tune:/m.gguf")], calibrated_at="2026-11-27")
    assert more is not None and more.refitted_from == ("/m.gguf",) and "refitted" in more.label


def test_fit_takes_a_prior_layer_cost_when_shapes_cannot_separate_it() -> None:
    """One shape cannot tell bandwidth from per-layer cost: the cost is the prior (never zero), the rest is
    bandwidth. A thread count with one shape borrows the cost of the nearest one that has several."""
    model = speed.fit([_obs(2, 8, 100_000_000, 10e9, 50e-6)], calibrated_at="x", reference_layer_s=50e-6)
    assert model is not None and model.cpu[0].layer_s == pytest.approx(50e-6)
    assert model.cpu[0].bandwidth == pytest.approx(10e9, rel=1e-6)
    zero = speed.fit([_obs(2, 8, 100_000_000, 10e9, 0.0)], calibrated_at="x", reference_layer_s=0.0)
    assert zero is not None and zero.cpu[0].layer_s == speed.MIN_LAYER_S  # a layer costs something
    assert speed.fit([], calibrated_at="x") is None
    two = [
        _obs(1, 6, 80_000_000, 9e9, 40e-6),
        _obs(1, 16, 30_000_000, 9e9, 40e-6),
        _obs(2, 8, 100_000_000, 15e9, 40e-6),
    ]
    borrowed = speed.fit(two, calibrated_at="x")
    assert borrowed is not None and borrowed.cpu[1].layer_s == pytest.approx(40e-6, rel=1e-6)
    assert borrowed.cpu[1].bandwidth == pytest.approx(15e9, rel=1e-6)
    # A model small enough to decode from the CPU's caches says nothing about RAM bandwidth: not fitted.
    tiny = _obs(2, 4, 4_000_000, 80e9, 0.0, "tune:/tiny.gguf")
    with_tiny = speed.fit([_obs(2, 8, 100_000_000, 10e9, 50e-6), tiny], calibrated_at="x", reference_layer_s=50e-6)
    assert with_tiny is not None and with_tiny.refitted_from == ()
    assert with_tiny.cpu[0].bandwidth == pytest.approx(10e9, rel=1e-6)


def test_thread_interpolation_and_prediction(models: dict) -> None:
    from launcher.model.shards import open_local

    m = SpeedModel(cpu=(CpuPoint(1, 8e9, 10e-6), CpuPoint(4, 20e9, 40e-6)), calibrated_at="2026-11-27")
    assert m.cpu_at(4).bandwidth == 20e9 and m.cpu_at(16).bandwidth == 20e9  # more threads than measured
    assert m.cpu_at(2).bandwidth == pytest.approx(12e9) and m.cpu_at(2).layer_s == pytest.approx(20e-6)
    # The planner's own prediction with these constants: every layer's cost plus the bytes read over the
    # bandwidth for the thread count (measured, interpolated, or the most measured).
    g = open_local(models["qwen3moe-q8"].path)
    on_cpu = {t.name: "CPU" for t in g.tensors.tensors}
    per_token = bytes_per_token(g.tensors, g.hparams, on_cpu)["CPU"]
    for threads, bandwidth, layer_s in ((4, 20e9, 40e-6), (2, 12e9, 20e-6), (16, 20e9, 40e-6)):
        tps = predict_tg(g.tensors, g.hparams, on_cpu, {}, threads, None, speed=m)
        assert 1 / tps == pytest.approx(g.hparams.n_layer * layer_s + per_token / bandwidth)


def test_planner_uses_the_machine_speed_and_says_so(models: dict) -> None:
    from launcher.machine.spec import CPU, Machine
    from launcher.model.shards import open_local

    m = open_local(models["qwen3moe-q8"].path)
    machine = Machine(ram_total_bytes=16 << 30, ram_available_bytes=16 << 30, cpu=CPU(physical_cores=2))
    ref = plan(machine, m.tensors, m.hparams, Request(ctx=4096))
    assert ref.speed_source == "reference constants"
    fast = SpeedModel(cpu=(CpuPoint(2, 1e12, 0.0),), calibrated_at="2026-11-27")
    cal = plan(replace(machine, speed=fast), m.tensors, m.hparams, Request(ctx=4096))
    assert cal.speed_source == "calibrated on this machine, 2026-11-27"
    per_token = sum(bytes_per_token(m.tensors, m.hparams, cal.placement).values())
    assert cal.predicted_tg_tps == pytest.approx(1e12 / per_token)
    assert cal.placement == ref.placement  # only the prediction changes


def _m(k: Knobs, pp: float | None, tg: float | None, error: str | None = None) -> Measured:
    return Measured(k, ("llama-bench",), pp, tg, {"CPU": 1}, error)


BASE = Knobs(2, 512, baseline=True)
START = Knobs(2, 512)


@pytest.mark.parametrize("goal", tune.GOALS)
def test_choose_never_picks_slower_than_the_baseline(goal: tune.Goal) -> None:
    base = _m(BASE, 100.0, 50.0)
    slower = _m(START, 90.0, 45.0)
    failed = _m(Knobs(2, 2048), None, None, "out of memory while loading")
    assert tune.choose([base, slower, failed], goal) is base
    tie = _m(START, 100.0, 50.0)
    assert tune.choose([tie, base], goal) is base  # a tie goes to llama.cpp's default
    better = _m(Knobs(1, 512), 120.0, 60.0)
    assert tune.choose([base, slower, better], goal) is better


def test_goals_score_differently() -> None:
    fast_prompt = _m(Knobs(2, 2048), 400.0, 40.0)
    fast_decode = _m(Knobs(2, 512), 100.0, 60.0)
    assert tune.choose([fast_prompt, fast_decode], "decode") is fast_decode
    assert tune.choose([fast_prompt, fast_decode], "prefill") is fast_prompt
    # balanced: 512/400 + 128/40 = 4.48 s vs 512/100 + 128/60 = 7.25 s for one turn
    assert tune.choose([fast_prompt, fast_decode], "balanced") is fast_prompt


def test_search_walks_one_knob_at_a_time_and_keeps_what_was_measured_when_stopped() -> None:
    space = Space(threads=(1, 2), ubatches=(512, 1024), flash_attn=("on", "off"), load_modes=("mmap", "none"))
    table = {1024: 30.0, 512: 20.0}  # decode tokens/s by ubatch; threads 1 halves it; fa off fails

    def measure(k: Knobs) -> Measured:
        if k.flash_attn == "off":
            return _m(k, None, None, "failed to load")
        tg = 10.0 if k.baseline else table[k.ubatch] / (2 if k.threads == 1 else 1)
        return _m(k, tg * 4, tg)

    seen: list[Knobs] = []

    def counting(k: Knobs) -> Measured:
        seen.append(k)
        return measure(k)

    measured, stopped = tune.search(START, BASE, space, "decode", counting)
    assert stopped is None
    assert seen.count(BASE) == 2 and seen[-2] == BASE  # the winner and the baseline are confirmed at the end
    labels = [m.label for m in measured]
    assert labels[0] == tune.BASELINE and labels[1] == START.label
    assert len(labels) == len(set(labels)) <= space.size()
    best = tune.choose(measured, "decode")
    assert best is not None and best.knobs.ubatch == 1024 and best.knobs.threads == 2
    assert any(m.error == "failed to load" for m in measured)  # recorded, not fatal

    calls: list[Knobs] = []

    def stop_third(k: Knobs) -> Measured:
        if len(calls) == 2:
            raise tune.Stop("the budget is spent")
        calls.append(k)
        return measure(k)

    measured, stopped = tune.search(START, BASE, space, "decode", stop_third)
    assert stopped == "the budget is spent" and len(measured) == 2


def _half_the_experts_vram(model: Any) -> int:
    """A GPU size that holds the model's non-expert weights, KV cache and compute at 4K, and half its expert layers."""
    from launcher.plan import kv_cache, memory

    t, hp = model.tensors, model.hparams
    base = t.non_expert_bytes() + kv_cache.kv_layout(hp).bytes_for(4096) + memory.gpu_compute_bytes(hp, 4096, 512)
    half = sum(t.expert_bytes(il) for il in t.expert_layers[: len(t.expert_layers) // 2])
    return memory.CUDA_CONTEXT_BYTES + memory.GPU_MARGIN_BYTES + base + half


def test_bench_and_server_commands_of_tuned_plans(models: dict) -> None:
    from launcher.machine.spec import CPU, GPU, Machine
    from launcher.model.shards import open_local

    m = open_local(models["deepseek2-q8"].path)
    t, hp = m.tensors, m.hparams
    vram = _half_the_experts_vram(m)
    gpu = GPU(0, "test GPU", vram, vram)
    machine = Machine(gpus=(gpu,), ram_total_bytes=16 << 30, ram_available_bytes=16 << 30, cpu=CPU(physical_cores=2))
    p = plan(machine, m.tensors, m.hparams, Request(ctx=4096, ubatch=512))
    assert p.overrides, "the test needs a plan with -ot overrides"
    # The expert-layer neighbours: one more / one fewer expert layer on the GPU than runq's plan.
    biggest = max(t.expert_bytes(il) for il in t.expert_layers)
    on_gpu = {}
    for d in (-1, 0, 1):
        req = tune.request_for(Request(ctx=4096), Knobs(2, 512, expert_delta=d), biggest)
        on_gpu[d] = len(plan(machine, t, hp, req).expert_layers["CUDA0"])
    assert on_gpu[-1] == on_gpu[0] - 1 and on_gpu[1] == on_gpu[0] + 1
    # A candidate's knobs are request fields; llama/argv.py writes its llama-bench command from the plan alone.
    k = Knobs(2, 512, "on", "none")
    kp = plan(machine, t, hp, tune.request_for(Request(ctx=4096), k, biggest))
    argv = bench_argv("llama-bench", "m.gguf", kp, pp=256, tg=128, reps=2, gpus=True)
    assert kp.overrides and argv[argv.index("-ot") + 1] == ";".join(str(o) for o in kp.overrides)
    assert argv[argv.index("-p") + 1] == "512"  # a prompt at least one ubatch long
    assert argv[argv.index("-fa") + 1] == "on" and argv[argv.index("-lm") + 1] == "none"
    assert argv[argv.index("-t") + 1] == "2" and argv[argv.index("-ub") + 1] == "512"
    base = bench_argv("llama-bench", "m.gguf", None, pp=512, tg=128, reps=2, gpus=True)
    assert "-ot" not in base and "-ngl" not in base and "-t" not in base and base[-2:] == ["-fitt", "1024"]
    # The baseline as a plan (a tuned record of llama.cpp's default) writes the same command.
    bp = plan(machine, t, hp, tune.request_for(Request(ctx=4096), BASE, biggest))
    assert bp.llama_default and bench_argv("llama-bench", "m.gguf", bp, pp=512, tg=128, reps=2, gpus=True) == base

    # Under --gpu-limit the baseline's fit leaves the same room as runq's plan had (cli/measure computes the margin).
    limited = bench_argv("llama-bench", "m.gguf", None, pp=512, tg=128, reps=2, gpus=True, fit_target_mib=130_000)
    assert limited[-2:] == ["-fitt", "130000"]

    # The server command of the same plans: the baseline leaves placement, batch and threads to llama.cpp, not the
    # slots (llama-server's own default is 4).
    assert plan_flags(bp) == ["-c", "4096", "-np", "1"]
    tuned = plan_flags(plan(machine, t, hp, tune.request_for(Request(ctx=4096), Knobs(2, 512, "off", "mmap"), 0)))
    assert tuned[tuned.index("-fa") + 1] == "off" and "-lm" not in tuned and "-ot" in tuned


def test_parse_budget() -> None:
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget("1h") == 3600
    for bad in ("10", "ten minutes", "0s"):
        with pytest.raises(UsageError):
            parse_budget(bad)


def test_merge_averages_two_runs_and_keeps_failures() -> None:
    a, b = _m(START, 100.0, 10.0), _m(START, 200.0, 30.0)
    m = tune.merge(a, b)
    assert (m.pp_tps, m.tg_tps, m.error) == (150.0, 20.0, None)
    assert tune.merge(a, _m(START, None, None, "out of memory while loading")).error == (
        "on the second run: out of memory while loading"
    )


def test_gpu_limit_caps_each_gpu_and_plans_fewer_expert_layers(models: dict) -> None:
    from launcher.machine.spec import CPU, GPU, Machine, limit_gpus
    from launcher.model.shards import open_local

    m = open_local(models["deepseek2-q8"].path)
    t, hp = m.tensors, m.hparams
    limit = _half_the_experts_vram(m)
    big = GPU(0, "big GPU", 140 << 30, 139 << 30)
    machine = Machine(gpus=(big, replace(big, index=1)), ram_total_bytes=16 << 30, ram_available_bytes=16 << 30,
                      cpu=CPU(physical_cores=2))  # fmt: skip
    small = limit_gpus(machine, limit)
    assert [(g.total_bytes, g.free_bytes) for g in small.gpus] == [(limit, limit)] * 2
    assert small.gpus[0].name == "big GPU" and limit_gpus(small, 1 << 40).gpus == small.gpus  # a cap, never more
    one = replace(machine, gpus=machine.gpus[:1])
    full = plan(one, t, hp, Request(ctx=4096))
    capped = plan(limit_gpus(one, limit), t, hp, Request(ctx=4096))
    # Everything fits 140 GB; under the limit about half the expert layers go to the CPU.
    assert not full.overrides and capped.overrides and capped.fits
    assert 0 < len(capped.expert_layers["CUDA0"]) < len(full.expert_layers["CUDA0"])


def _s(k: Knobs, tg: list[float], pp: list[float] | None = None) -> Measured:
    """A candidate with the tokens/s of each repetition, as llama-bench reports them (samples_ts)."""
    pp = pp or [x * 4 for x in tg]
    return Measured(k, ("llama-bench",), sum(pp) / len(pp), sum(tg) / len(tg), {"CPU": 1}, None, 1.0,
                    tuple(pp), tuple(tg))  # fmt: skip


def test_a_winner_must_beat_the_baseline_by_more_than_its_runs_spread() -> None:
    """Issue 20: tune reported winners that only measured luckier. A margin within the spread of either one's
    repetitions (or under MIN_MARGIN) keeps llama.cpp's default, and the table says "within noise"."""
    base = _s(BASE, [100.0, 90.0, 110.0])  # ±20%
    lucky = _s(START, [115.0, 95.0, 125.0])  # 11% faster on average, within the spread
    assert tune.choose([base, lucky], "decode") is base and tune.within_noise(lucky, base, "decode")
    assert tune.fastest([base, lucky], "decode") is lucky
    faster = _s(Knobs(1, 512), [140.0, 139.0, 141.0])  # 40% faster: beyond either spread
    assert tune.choose([base, lucky, faster], "decode") is faster and not tune.within_noise(faster, base, "decode")
    # Without repetitions to measure a spread, a win still needs MIN_MARGIN.
    one, two = _s(BASE, [100.0]), _s(START, [102.0])
    assert tune.noise(one, two, "decode") == tune.MIN_MARGIN and tune.choose([one, two], "decode") is one
    # balanced: the spread of each figure weighted by its share of the turn's time.
    m = _s(START, [50.0, 50.0], [1000.0, 1500.0])
    prompt_s, answer_s = 512 / 1250, 128 / 50
    assert tune.spread(m, "balanced") == pytest.approx(prompt_s * 0.4 / (prompt_s + answer_s))
    assert tune.spread(m, "prefill") == pytest.approx(0.4) and tune.spread(m, "decode") == 0.0


def test_the_search_keeps_the_start_when_a_knob_wins_only_within_noise() -> None:
    space = Space(threads=(1, 2), ubatches=(), flash_attn=("on",), load_modes=())

    def measure(k: Knobs) -> Measured:
        if k.baseline:
            return _s(k, [50.0, 49.0])
        if k.threads == 1:
            return _s(k, [104.0, 96.0, 112.0])  # looks 4% faster, repetitions 16% apart
        return _s(k, [100.0, 99.0, 101.0])

    measured, _ = tune.search(START, BASE, space, "decode", measure)
    best = tune.choose(measured, "decode")
    assert best is not None and best.knobs == START  # threads 1 did not win beyond noise: the start stays


def test_ubatch_is_not_searched_for_decode_where_it_cannot_change_it() -> None:
    assert tune.space_for(2, 2, False, "decode").ubatches == ()  # CPU only: decode reads one token at a time
    assert tune.space_for(2, 2, False, "balanced").ubatches == tune.UBATCHES
    assert tune.space_for(2, 2, True, "decode").ubatches == tune.UBATCHES  # with a GPU it may move a layer


@pytest.mark.parametrize(("reps", "pp", "tg", "flag"), [(0, 512, 128, "-r 0"), (-1, 512, 128, "-r -1"),
                                                         (2, 0, 128, "--pp 0"), (2, 512, 0, "--tg 0"),
                                                         (101, 512, 128, "-r 101")])  # fmt: skip
def test_tune_refuses_inputs_that_measure_nothing(reps: int, pp: int, tg: int, flag: str) -> None:
    with pytest.raises(UsageError, match=f"^{flag}: must be between 1 and") as e:
        tune.check_inputs(reps, pp, tg)
    assert e.value.hint and "leave" in e.value.hint
    tune.check_inputs(1, 1, 1)


def test_a_noisy_tune_measurement_becomes_a_noisy_observation() -> None:
    m = replace(_s(START, [20.0, 40.0, 60.0]), busy=0.5)
    o = tune.observation(m, 2, 24, {"CPU": 300_000_000, "CUDA0": 100_000_000}, "tune:/m.gguf")
    assert o.spread == pytest.approx(1.0) and o.busy == 0.5 and o.noisy
    assert (o.cpu_bytes, o.gpu_bytes, o.tg_tps) == (300_000_000, (("CUDA0", 100_000_000),), 40.0)
    merged = tune.merge(m, _s(START, [45.0]))
    assert merged.tg_samples == (20.0, 40.0, 60.0, 45.0) and merged.busy == 0.5


def test_the_verdict_says_within_noise_and_never_calls_a_lucky_run_faster(capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli.measure import _print_table

    base, lucky = _s(BASE, [100.0, 90.0, 110.0]), _s(Knobs(2, 1024), [115.0, 95.0, 125.0])
    best = tune.choose([base, lucky], "decode")
    _print_table([base, lucky], best, base, "decode", None)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if lucky.label in line)
    assert row.rstrip().endswith("within noise") and "x llama.cpp's default" not in out
    assert f"Chosen for decode: {tune.BASELINE}; the fastest, {lucky.label}, measured 1.12x it, within the ±" in out
    faster = _s(Knobs(1, 512), [140.0, 139.0, 141.0])
    _print_table([base, faster], faster, base, "decode", None)
    out = capsys.readouterr().out
    assert f"Chosen for decode: {faster.label} (decode 1.40x llama.cpp's default, beyond the ±20%" in out


def test_budget_and_tune_numbers_are_refused_by_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    from launcher.cli.main import main

    for argv, fragment in ((["--budget", "-1m"], "--budget '-1m' must be more than zero"),
                           (["-r", "0"], "-r 0: must be between 1 and 100"), (["--pp", "0"], "--pp 0: must be"),
                           (["--tg", "0"], "--tg 0: must be")):  # fmt: skip
        assert main(["tune", str(tmp_path / "m.gguf"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"Error: {fragment}") and "\nHint: " in err, err


def test_depth_is_the_context_less_the_turn_bounded_by_the_fill_time() -> None:
    assert tune.depth_for(32768, 512, 128, None, 0) == 32000  # whole 256-token steps
    assert tune.depth_for(32768, 512, 128, 1000.0, 5.0) == 4864  # 5 s of filling at 1,000 t/s
    assert tune.depth_for(700, 512, 128, 1000.0, 5.0) == 0  # no room for one step
    from launcher.cli.tune_steps import parse_depth

    assert parse_depth("auto") is None and parse_depth("4096") == 4096 and parse_depth("0") == 0
    for bad in ("-1", "lots"):
        with pytest.raises(UsageError):
            parse_depth(bad)


def test_mtp_drafting_is_kept_only_when_it_measured_faster() -> None:
    best = _s(START, [100.0, 100.0])
    plain = replace(_s(START, [90.0, 91.0]), via="llama-server")
    slower = replace(_s(replace(START, spec="draft-mtp"), [60.0, 61.0]), via="llama-server")
    lucky = replace(_s(replace(START, spec="draft-mtp"), [92.0, 93.0]), via="llama-server")  # within noise
    faster = replace(_s(replace(START, spec="draft-mtp"), [130.0, 131.0]), via="llama-server")
    assert tune.with_spec(best, plain, slower, "decode") is best
    assert tune.with_spec(best, plain, lucky, "decode") is best
    assert tune.with_spec(best, plain, faster, "decode") is faster and faster.label.endswith(" +mtp")
    assert tune.request_for(Request(ctx=4096), faster.knobs, 0).spec_type == "draft-mtp"
    assert Knobs.from_json(faster.knobs.as_json()) == faster.knobs
    assert Knobs.from_json({k: v for k, v in START.as_json().items() if k != "spec"}) == START  # older records


def test_the_table_shows_the_depth_and_what_measured_each_row(capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli.measure import _print_table

    base = replace(_s(BASE, [100.0, 101.0]), depth=4096)
    served = replace(_s(replace(START, spec="draft-mtp"), [90.0, 91.0]), depth=4096, via="llama-server")
    _print_table([base, served], base, base, "decode", None, depth=4096, pp=512, tg=128)
    out = capsys.readouterr().out
    assert "pp512 @ d4096" in out and "tg128 @ d4096" in out
    row = next(line for line in out.splitlines() if served.label in line)
    assert "through llama-server" in row
    assert served.as_json()["depth"] == 4096 and served.as_json()["via"] == "llama-server"
