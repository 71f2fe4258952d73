"""Ask llama.cpp for its own sizes, then place again (edge: runs `llama-fit-params`, writes replicas).

`project_sizes()` is the one hook the plan path calls after `choose()`: when a
llama.cpp build for this machine exists, it runs `llama-fit-params -fitp on` with
the plan's own flags on the real file (a local model) or on a header-only replica
(a Hub quant whose headers are cached), hands the device rows to the planner as a
`Projection`, and re-plans: at most MAX_ROUNDS rounds, stopping when the flags stop
changing. Bounded (TIMEOUT_S per call); any failure keeps runq's estimate and says
why, with llama.cpp's own error line.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.catalog.sources import ModelSource
from launcher.errors import ProjectionFailed, RunqError
from launcher.llama import procs
from launcher.llama.argv import fit_answer_argv, fit_argv, fit_default_argv, fit_flags
from launcher.llama.binaries import Binaries
from launcher.machine.spec import Machine
from launcher.plan.choose import Candidate, Choice
from launcher.plan.fit_compare import FitAnswer, parse_fit_line
from launcher.plan.place import plan
from launcher.plan.projection import Projection, parse_fit_print
from launcher.plan.types import DEFAULT_UBATCH, LARGE_UBATCH, SMALL_UBATCH, Plan, Request

TIMEOUT_S = 30
MAX_ROUNDS = 3
BINARY = "llama-fit-params"


@dataclass(frozen=True)
class Oracle:
    """A llama.cpp build that can project sizes."""

    binary: Path
    build: str  # short commit
    cpu_only: bool = False  # a CPU build: every tensor is Host, so -ot/-ts mean nothing (and CUDA names fail)
    argv: tuple[str, ...] = ()  # how to start it (a multi-call `llama fit-params`); empty: the binary itself

    @classmethod
    def find(cls, binaries: Binaries | None) -> Oracle | None:
        if binaries is None or not binaries.has(BINARY):
            return None
        tool = binaries.tool(BINARY)
        return cls(Path(tool[0]), build_label(binaries), binaries.backend == "cpu", tuple(tool))

    @property
    def command(self) -> list[str]:
        return list(self.argv) or [str(self.binary)]

    def placement_projects(self, p: Plan) -> bool:
        """Whether this build's projection depends on the placement flags: a GPU build, or a CPU build whose plan
        runs its layers on workers' GPUs (llama.cpp asks them; a described local GPU it cannot). A worker lending
        only RAM for experts is projected as before: the host's rows alone."""
        return not self.cpu_only or (not p.gpu_devices and any(n.startswith("RPC") for n in p.gpu_layers))


def build_label(binaries: Binaries) -> str:
    """The build's short commit: from runq's manifest, else from `--version`."""
    if binaries.commit:
        return binaries.commit[:7]
    try:
        argv = [*binaries.tool(BINARY), "--version"]
        r = procs.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"commit ([0-9a-f]{7,40})|\(([0-9a-f]{7,40})\)", r.stdout + r.stderr)
    return (m.group(1) or m.group(2))[:7] if m else "unknown"


def project(
    oracle: Oracle, model: Path, p: Plan, rpc_names: tuple[str, ...] = (), placement: list[str] | None = None
) -> Projection:
    """llama.cpp's rows for exactly this plan's flags (or, with `placement`, for these placement flags instead:
    fit's own answer). `rpc_names`: runq's names (RPC<n>[host:port]) of the workers' devices in llama.cpp's order,
    which `-fitp on` prints as RPC0, RPC1, … across all workers."""
    if placement is not None:
        argv = fit_answer_argv(oracle.command, str(model), p, placement)
    else:
        argv = fit_argv(str(oracle.binary), str(model), p, placement=oracle.placement_projects(p))
        argv[:1] = oracle.command
    try:
        r = procs.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ProjectionFailed(f"{BINARY} did not answer within {TIMEOUT_S} s") from None
    except OSError as e:
        raise ProjectionFailed(f"cannot run {oracle.binary}: {e.strerror}") from None
    try:
        if r.returncode != 0:
            raise ValueError
        rows = parse_fit_print(r.stdout)
    except ValueError:
        raise ProjectionFailed(f"{BINARY} failed (exit {r.returncode}): {_error_line(r.stderr)}") from None
    rows = tuple(replace(row, name=_rpc_name(row.name, rpc_names)) for row in rows)
    return Projection(oracle.build, p.ctx, p.ubatch, p.cache_type_k, p.cache_type_v, rows)


def _rpc_name(name: str, rpc_names: tuple[str, ...]) -> str:
    m = re.fullmatch(r"RPC(\d+)", name)
    return rpc_names[int(m.group(1))] if m and int(m.group(1)) < len(rpc_names) else name


def rpc_device_names(machine: Machine, rpc: tuple[str, ...]) -> tuple[str, ...]:
    """runq's names of the workers' devices a plan registers (--rpc order, each worker's own order)."""
    by_ep = {w.endpoint: w for w in machine.workers}
    return tuple(f"RPC{d.index}[{ep}]" for ep in rpc if ep in by_ep for d in by_ep[ep].devices)


def _run(oracle: Oracle, argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return procs.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProjectionFailed(f"{BINARY} did not answer within {TIMEOUT_S} s") from None
    except OSError as e:
        raise ProjectionFailed(f"cannot run {oracle.binary}: {e.strerror}") from None


def fit_default(
    oracle: Oracle, model: Path, p: Plan, margins_mib: list[int], *, llama_batch: bool = False
) -> FitAnswer:
    """The placement llama.cpp's own fit would choose for this plan's context (and ubatch, unless llama_batch),
    keeping `margins_mib` free on each device (llama.cpp's device order). Raises ProjectionFailed."""
    argv = fit_default_argv(oracle.command, str(model), p, margins_mib, llama_batch=llama_batch)
    r = _run(oracle, argv)
    try:
        if r.returncode != 0:
            raise ValueError
        return parse_fit_line(r.stdout)
    except ValueError:
        raise ProjectionFailed(f"{BINARY} failed (exit {r.returncode}): {_error_line(r.stderr)}") from None


_LIST_RE = re.compile(r"^\s*([A-Za-z]+)(\d+): (.*?) \((\d+) MiB, (\d+) MiB free\)")


def list_devices(oracle: Oracle, rpc: tuple[str, ...] = ()) -> list[tuple[str, int, int]]:
    """(device, total bytes, free bytes) as llama.cpp sees them, in its order: the workers' devices (RPC<n>[host:port],
    n counted per worker as their buffers are named) first, then this host's. Raises ProjectionFailed."""
    argv = [*oracle.command, *(["--rpc", ",".join(rpc)] if rpc else []), "--list-devices"]
    r = _run(oracle, argv)
    out: list[tuple[str, int, int]] = []
    per_worker: dict[str, int] = {}
    for line in (r.stdout + r.stderr).splitlines():
        m = _LIST_RE.match(line)
        if not m:
            continue
        kind, index, desc = m.group(1), m.group(2), m.group(3)
        if kind == "RPC":
            ep = desc.split()[0]
            name = f"RPC{per_worker.get(ep, 0)}[{ep}]"
            per_worker[ep] = per_worker.get(ep, 0) + 1
        else:
            name = f"{kind}{index}"
        out.append((name, int(m.group(4)) * 2**20, int(m.group(5)) * 2**20))
    if r.returncode != 0:
        raise ProjectionFailed(f"{BINARY} --list-devices failed (exit {r.returncode}): {_error_line(r.stderr)}")
    return out


def _error_line(stderr: str) -> str:
    """llama.cpp's own words for what went wrong: its first error-level log message (the root cause comes before
    the generic 'failed to load model'; an abort may interleave it with other output), else an assertion, else
    the exception's text."""
    logged = re.findall(r"\d+\.\d+\.\d+\.\d+ E (.+)", stderr)
    if logged:
        return logged[0].strip()
    if m := re.search(r"GGML_ASSERT\(.*", stderr):
        return m.group(0).strip()
    if m := re.search(r"what\(\):\s*(.+)", stderr):
        return m.group(1).strip()
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def refine(
    oracle: Oracle, model: Path, machine: Machine, source: ModelSource, req: Request, first: Plan
) -> tuple[Plan, int, tuple[Projection, ...]]:
    """Re-plan on llama.cpp's sizes until the flags stop changing (at most MAX_ROUNDS projections of the plan);
    returns the plan, the rounds and llama.cpp's answers (the request's `projections` for that plan)."""
    projections: dict[tuple[object, ...], Projection] = {}
    current = first
    rounds = 0
    while rounds < MAX_ROUNDS:
        rounds += 1
        for ub in sorted(_ubatches(req, current, source)):
            trial = replace(current, ubatch=ub)
            # A CPU build puts everything on the host: its answer does not depend on the placement flags.
            placement = tuple(fit_flags(trial)) if oracle.placement_projects(trial) else ()
            key: tuple[object, ...] = (ub, current.ctx, current.cache_type_k, current.cache_type_v, *placement)
            if key not in projections:
                projections[key] = project(oracle, model, trial, rpc_device_names(machine, trial.rpc))
        nxt = plan(machine, source.tensors, source.hparams, replace(req, projections=tuple(projections.values())))
        done = fit_flags(nxt) == fit_flags(current)  # llama.cpp's sizes were for exactly these flags
        current = nxt
        if done:
            break
    return current, rounds, tuple(projections.values())


def _ubatches(req: Request, p: Plan, source: ModelSource) -> set[int]:
    """The ubatches the planner will weigh for this plan (planner.plan): give it llama.cpp's sizes for each."""
    out = {p.ubatch}
    if req.ubatch is None and p.gpu_devices:
        out.add(DEFAULT_UBATCH)
        if any(source.tensors[n].is_expert for n in p.cpu_tensors):
            out.add(LARGE_UBATCH)
        if p.ngl < p.n_layer + 1:
            out.add(SMALL_UBATCH)
    return out


class _NoProjection(Exception):
    """Why the estimate stands (said to the user)."""


def project_sizes(
    choice: Choice,
    machine: Machine,
    req: Request,
    binaries: Binaries | None,
    model_file: Callable[[ModelSource], Path | None],
    *,
    pinned: bool = False,
) -> tuple[Choice, str, tuple[Projection, ...]]:
    """The choice with its chosen plan placed again on llama.cpp's sizes, a line saying what happened, and
    llama.cpp's answers for the chosen plan (none when the estimate stands)."""
    oracle = Oracle.find(binaries)
    if oracle is None:
        return choice, "runq estimate (no llama.cpp build here to ask: `runq build`)", ()
    src = choice.chosen.source
    smaller = [c for c in choice.candidates if c.plan.fits and c.source.size_bytes < src.size_bytes and not pinned]
    order = [choice.chosen, *sorted(smaller, key=lambda c: -c.source.size_bytes)]
    tried: list[Candidate] = []
    rounds = 0
    answers: tuple[Projection, ...] = ()
    try:
        for cand in order[:3]:  # llama.cpp may say the chosen quant does not fit after all: try the next ones
            path = _model_path(model_file, cand.source)
            try:
                refined, rounds, answers = refine(oracle, path, machine, cand.source, req, cand.plan)
            except ProjectionFailed as e:
                arch = cand.source.hparams.arch
                raise _NoProjection(f"llama.cpp could not project {cand.source.name}, {arch}: {e.message}") from None
            tried.append(Candidate(cand.source, refined))
            if refined.fits or pinned:
                break
    except _NoProjection as e:
        if not tried:
            return choice, f"runq estimate ({e})", ()
    chosen = tried[-1]
    new = {c.source.name: c for c in tried}
    cands = tuple(new.get(c.source.name, c) for c in choice.candidates)
    note = f"llama.cpp projection, build {oracle.build} ({rounds} round{'s' if rounds > 1 else ''})"
    if oracle.cpu_only and machine.gpus:  # this build cannot see the GPUs described: their compute is runq's
        note += "; compute, with GPUs this build cannot see: runq estimate"
    reasons = choice.reasons
    if chosen.source.name != src.name:
        reasons = (*reasons, f"{chosen.source.name}: {src.name} does not fit on llama.cpp's own sizes")
    return replace(choice, chosen=chosen, candidates=cands, reasons=reasons), note, answers


def _model_path(model_file: Callable[[ModelSource], Path | None], src: ModelSource) -> Path:
    try:
        path = model_file(src)
    except RunqError as e:
        raise _NoProjection(f"no replica of {src.name}: {e.message}") from None
    if path is None:
        raise _NoProjection(f"the headers of {src.name} are not at hand")
    return path
