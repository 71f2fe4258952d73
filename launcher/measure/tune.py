"""`runq tune`'s decisions: which candidates to measure, what each asks of the planner, and which measured
candidate wins for a goal. Pure: no I/O; the measuring is injected (launcher/cli/measure.py runs it).

The search starts from llama.cpp's own default (no placement flags: its fit decides) as the baseline
and runq's plan, then walks one knob at a time — expert layers per GPU (±1-2), ubatch 512/1024/2048,
threads (physical, logical, physical-1), flash attention on/off, load mode — keeping the best value of
each before trying the next; then the winner and the baseline run once more, back to back (each keeps
the mean of its runs). The winner is the best score for the goal among what was measured, the baseline
included, so it is never slower than llama.cpp's default as measured; and a knob's value (or the winner over
the baseline) is taken only when its margin is larger than its repetitions spread (at least MIN_MARGIN):
what was there before stays when the difference is within noise. ubatch does not change decode, so for the
decode goal without a GPU (where it cannot move a layer either) it is not searched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from launcher.errors import UsageError
from launcher.machine.speed import Observation, relative_spread
from launcher.plan.types import Plan, Request

Goal = Literal["decode", "prefill", "balanced"]
GOALS: tuple[Goal, ...] = ("decode", "prefill", "balanced")
BASELINE = "llama.cpp default"
UBATCHES = (512, 1024, 2048)
# "balanced" scores one typical turn: a 512-token prompt and a 128-token answer (1 / its seconds).
BALANCED_PROMPT, BALANCED_ANSWER = 512, 128
MIN_MARGIN = 0.03  # a win smaller than this is within an idle machine's run-to-run noise, whatever -r measured
MAX_REPETITIONS, MAX_TOKENS = 100, 65_536


@dataclass(frozen=True)
class Knobs:
    threads: int
    ubatch: int
    flash_attn: str = "auto"  # auto | on | off
    load_mode: str = "mmap"  # mmap | none
    expert_delta: int = 0  # expert layers per GPU compared with runq's plan (+: more on the GPU)
    baseline: bool = False
    spec: str = "none"  # --spec-type: "draft-mtp" for a model with NextN layers (measured through llama-server)
    moe_cache_mib: int = 0  # --moe-cache-mib (newer llama.cpp): a GPU cache of hot experts (through llama-server)

    @property
    def label(self) -> str:
        text = BASELINE
        if not self.baseline:
            text = f"runq t{self.threads} ub{self.ubatch} fa-{self.flash_attn} {self.load_mode}"
            text += f" {self.expert_delta:+d} layers" if self.expert_delta else ""
        text += " +mtp" if self.spec == "draft-mtp" else f" +{self.spec}" if self.spec != "none" else ""
        return text + (f" +cache {self.moe_cache_mib} MiB" if self.moe_cache_mib else "")

    def as_json(self) -> dict[str, Any]:
        return {"threads": self.threads, "ubatch": self.ubatch, "flash_attn": self.flash_attn,
                "load_mode": self.load_mode, "expert_delta": self.expert_delta, "baseline": self.baseline,
                "spec": self.spec, "moe_cache_mib": self.moe_cache_mib}  # fmt: skip

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Knobs:
        return Knobs(int(d["threads"]), int(d["ubatch"]), str(d["flash_attn"]), str(d["load_mode"]),
                     int(d["expert_delta"]), bool(d["baseline"]), str(d.get("spec", "none")),
                     int(d.get("moe_cache_mib", 0)))  # fmt: skip


@dataclass(frozen=True)
class Measured:
    knobs: Knobs
    argv: tuple[str, ...]
    pp_tps: float | None = None
    tg_tps: float | None = None
    peak_bytes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    pp_samples: tuple[float, ...] = ()  # tokens/s of each repetition (llama-bench's samples_ts), every run
    tg_samples: tuple[float, ...] = ()
    busy: float = 0.0  # the most of the CPUs other processes used while it ran
    depth: int = 0  # tokens of context filled before the timed prompt and answer (llama-bench -d)
    via: str = "llama-bench"  # or "llama-server" (what llama-bench cannot run: MTP drafting)
    tg_empty: tuple[float, ...] = ()  # decode t/s of each repetition on an empty cache too, when depth > 0

    @property
    def label(self) -> str:
        return self.knobs.label

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "argv": list(self.argv),
            "pp_tps": None if self.pp_tps is None else round(self.pp_tps, 2),
            "tg_tps": None if self.tg_tps is None else round(self.tg_tps, 2),
            "pp_spread": round(relative_spread(self.pp_samples), 3),
            "tg_spread": round(relative_spread(self.tg_samples), 3),
            "busy": round(self.busy, 3),
            "peak_bytes": dict(self.peak_bytes),
            "error": self.error,
            "depth": self.depth,
            "via": self.via,
            "tg_tps_empty": round(sum(self.tg_empty) / len(self.tg_empty), 2) if self.tg_empty else None,
        }


@dataclass(frozen=True)
class Space:
    """The values each knob may take on this machine."""

    threads: tuple[int, ...]
    expert_deltas: tuple[int, ...] = ()  # empty without GPUs
    ubatches: tuple[int, ...] = UBATCHES
    flash_attn: tuple[str, ...] = ("on", "off")
    load_modes: tuple[str, ...] = ("mmap", "none")

    def dimensions(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [("expert_delta", self.expert_deltas), ("ubatch", self.ubatches), ("threads", self.threads),
                ("flash_attn", self.flash_attn), ("load_mode", self.load_modes)]  # fmt: skip

    def size(self) -> int:
        """Candidates the search measures at most (baseline and start included)."""
        return 2 + sum(len(values) for _, values in self.dimensions())


def space_for(physical: int, logical: int, has_gpus: bool, goal: Goal = "balanced") -> Space:
    """The knobs worth measuring here: ubatch not for decode on the CPU alone (decode reads one token at a time,
    so its ubatch changes nothing there; with a GPU it may move an expert layer, so it is tried)."""
    threads = tuple(sorted({t for t in (physical, logical, physical - 1) if t >= 1}))
    ubatches = () if goal == "decode" and not has_gpus else UBATCHES
    return Space(threads=threads, expert_deltas=(-2, -1, 1, 2) if has_gpus else (), ubatches=ubatches)


def check_inputs(repetitions: int, pp: int, tg: int) -> None:
    """The numbers a tune run needs to measure anything (a UsageError names the flag otherwise)."""
    for flag, value, hi, what, default in (("-r", repetitions, MAX_REPETITIONS, "runs per test", 2),
                                           ("--pp", pp, MAX_TOKENS, "prompt tokens per test", 512),
                                           ("--tg", tg, MAX_TOKENS, "generated tokens per test", 128)):  # fmt: skip
        if not 1 <= value <= hi:
            raise UsageError(f"{flag} {value}: must be between 1 and {hi:,} ({what})",
                             hint=f"leave {flag} out for the default, {flag} {default}")  # fmt: skip


def start_knobs(plan: Plan) -> Knobs:
    return Knobs(threads=plan.threads, ubatch=plan.ubatch, load_mode=plan.load_mode)


def score(m: Measured, goal: Goal) -> float | None:
    """Higher is better; None when the candidate failed or lacks the figure the goal needs."""
    if m.error:
        return None
    if goal == "decode":
        return m.tg_tps
    if goal == "prefill":
        return m.pp_tps
    if not m.pp_tps or not m.tg_tps:
        return None
    return 1.0 / (BALANCED_PROMPT / m.pp_tps + BALANCED_ANSWER / m.tg_tps)


def spread(m: Measured, goal: Goal) -> float:
    """How far a candidate's repetitions were apart, for the figure the goal scores (relative)."""
    pp, tg = relative_spread(m.pp_samples), relative_spread(m.tg_samples)
    if goal == "decode":
        return tg
    if goal == "prefill" or not m.pp_tps or not m.tg_tps:
        return pp
    prompt_s, answer_s = BALANCED_PROMPT / m.pp_tps, BALANCED_ANSWER / m.tg_tps  # weighted by the turn's time
    return (prompt_s * pp + answer_s * tg) / (prompt_s + answer_s)


def noise(a: Measured, b: Measured, goal: Goal) -> float:
    """The margin one of two candidates must win by to be faster, not luckier: what either measured spread."""
    return max(spread(a, goal), spread(b, goal), MIN_MARGIN)


def beats(a: Measured, b: Measured, goal: Goal) -> bool:
    sa, sb = score(a, goal), score(b, goal)
    if sa is None:
        return False
    return sb is None or sa > sb * (1 + noise(a, b, goal))


def fastest(measured: Sequence[Measured], goal: Goal) -> Measured | None:
    """The best score for the goal, noise or not; the baseline wins ties."""
    best: Measured | None = None
    best_score = -1.0
    for m in measured:
        s = score(m, goal)
        if s is None:
            continue
        if s > best_score or (s == best_score and m.knobs.baseline):
            best, best_score = m, s
    return best


def choose(measured: Sequence[Measured], goal: Goal) -> Measured | None:
    """The winner for the goal: llama.cpp's default (or, without it, the first measured) until a candidate beats
    it by more than the noise, that one until another beats it, in the order measured (the search's order: the
    start, then each knob's values). So nothing slower than the baseline as measured is chosen, nothing that
    only measured luckier, and a value within noise of what was there before does not replace it."""
    scored = [m for m in measured if score(m, goal) is not None]
    if not scored:
        return None
    king = next((m for m in scored if m.knobs.baseline), scored[0])
    for m in scored:
        if m is not king and beats(m, king, goal):
            king = m
    return king


def within_noise(m: Measured, chosen: Measured, goal: Goal) -> bool:
    """Scored higher than the chosen one, by less than the noise: shown as such, not as a win."""
    sm, sc = score(m, goal), score(chosen, goal)
    return m is not chosen and sm is not None and sc is not None and sm > sc and not beats(m, chosen, goal)


class Stop(Exception):
    """Raised by the measure function to end the search (budget spent, Ctrl-C); what was measured stays."""


def search(
    start: Knobs, baseline: Knobs, space: Space, goal: Goal, measure: Callable[[Knobs], Measured]
) -> tuple[list[Measured], str | None]:
    """Baseline, start, then one knob at a time. Returns every measurement and why it stopped early (or None)."""
    done: dict[Knobs, Measured] = {}

    def visit(k: Knobs) -> None:
        if k not in done:
            done[k] = measure(k)

    try:
        visit(baseline)
        visit(start)
        best = start
        for name, values in space.dimensions():
            for value in values:
                visit(replace(best, **{name: value}))
            ours = [m for m in done.values() if not m.knobs.baseline]
            winner = choose(ours, goal)  # a new value only when it wins beyond noise
            if winner is not None:
                best = winner.knobs
        # Confirm on a noisy machine: the fastest and the baseline once more, back to back; each keeps the
        # mean of its two runs (and every repetition for its spread), so a lucky first run does not decide.
        final = fastest(list(done.values()), goal)
        if final is not None and not final.knobs.baseline:
            for k in (baseline, final.knobs):
                done[k] = merge(done[k], measure(k))
    except Stop as e:
        return list(done.values()), str(e) or "stopped"
    return list(done.values()), None


def merge(first: Measured, again: Measured) -> Measured:
    """Two runs of one candidate: the mean of their figures; a failed run counts as a failure."""
    if first.error or again.error:
        return first if first.error else replace(first, error=f"on the second run: {again.error}")

    def mean(a: float | None, b: float | None) -> float | None:
        return (a + b) / 2 if a is not None and b is not None else (a if a is not None else b)

    peaks = {d: max(first.peak_bytes.get(d, 0), again.peak_bytes.get(d, 0)) for d in {*first.peak_bytes,
                                                                                       *again.peak_bytes}}  # fmt: skip
    return replace(first, pp_tps=mean(first.pp_tps, again.pp_tps), tg_tps=mean(first.tg_tps, again.tg_tps),
                   peak_bytes=peaks, seconds=first.seconds + again.seconds,
                   pp_samples=first.pp_samples + again.pp_samples, tg_samples=first.tg_samples + again.tg_samples,
                   busy=max(first.busy, again.busy), tg_empty=first.tg_empty + again.tg_empty)  # fmt: skip


def observation(m: Measured, threads: int, n_layer: int, per_device: Mapping[str, int], source: str) -> Observation:
    """A candidate's decode as a measurement of this machine's constants (launcher/machine/speed.py), with how
    far its repetitions were apart and how busy the machine was, so a noisy one cannot poison the fit."""
    samples = m.tg_empty or m.tg_samples  # at depth, attention reads the cache too: the empty-cache figure
    assert samples
    gpu = tuple(sorted((d, n) for d, n in per_device.items() if d != "CPU"))
    return Observation(threads, n_layer, per_device.get("CPU", 0), sum(samples) / len(samples), gpu, source,
                       spread=relative_spread(samples), busy=m.busy)  # fmt: skip


def planned(start: Knobs, space: Space) -> Iterator[Knobs]:
    """An upper bound of what the search visits (for progress and ETA)."""
    yield start
    for name, values in space.dimensions():
        for value in values:
            yield replace(start, **{name: value})


def request_for(req: Request, knobs: Knobs, biggest_expert_layer: int) -> Request:
    """The plan request of a candidate: its ubatch, threads, flash attention and load mode; n more expert layers
    per GPU by lowering each GPU's margin by n of the largest expert layers (fewer: raising it); the baseline
    leaves placement to llama.cpp's own fit. MTP drafting plans the NextN layers' memory too."""
    if knobs.baseline:
        return replace(req, llama_default=True, spec_type=knobs.spec, moe_cache_mib=knobs.moe_cache_mib)
    margin = req.margin_extra_bytes - knobs.expert_delta * biggest_expert_layer
    return replace(req, ubatch=knobs.ubatch, threads=knobs.threads, margin_extra_bytes=margin,
                   flash_attn=knobs.flash_attn, load_mode=knobs.load_mode,  # type: ignore[arg-type]
                   spec_type=knobs.spec, moe_cache_mib=knobs.moe_cache_mib)  # fmt: skip


def with_spec(best: Measured, plain: Measured, drafted: Measured, goal: Goal) -> Measured:
    """MTP drafting (or a GPU expert cache) is taken only when it measured faster for the goal than the same
    candidate without it, both through llama-server (beyond the noise, like every other knob); else the winner
    stays what it was."""
    return drafted if beats(drafted, plain, goal) else best


def depth_for(ctx: int, pp: int, tg: int, pp_tps: float | None, fill_s: float) -> int:
    """The context to fill before each candidate's timed turn: the plan's context less the turn, bounded by what a
    prompt speed of pp_tps fills in fill_s seconds, in whole 256-token steps (0: too little for one)."""
    room = ctx - pp - tg
    if pp_tps:
        room = min(room, int(pp_tps * fill_s))
    return max(0, room // 256 * 256)
