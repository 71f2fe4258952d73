"""llama.cpp's own fit as a placement to compare with runq's: its answer read, replayed on the tensor list, the
expert bytes each device gets either way, and runq's plan grown to fit's where it kept fewer.

Pure: no I/O. `llama-fit-params` without `-fitp` prints one line, `-c N -ngl N[ -ts a,b][ -ot "P=B,P=B"]`
(fit-params.cpp); the placement it means is llama.cpp's loader's (llama-model.cpp load_tensors): layers from
`n_layer + 1 - ngl` up run on the devices, split by `-ts` (cumulative shares, std::upper_bound), the output layer
being slot n_layer and the input embedding always on the CPU; then the first `-ot` pattern that matches a tensor
name (std::regex_search) moves it. `-ngl -1` means fit changed nothing: every layer on the devices. NextN/MTP
layers are not loaded (fit-params never loads them).
"""

from __future__ import annotations

import bisect
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from launcher.machine.spec import Machine
from launcher.model.hparams import HParams
from launcher.model.tensors import Role, TensorSet
from launcher.plan.place import plan
from launcher.plan.types import CPU, Plan, Request
from launcher.units import MiB

GROW_ROUNDS = 3  # cuts by what fit kept more; then bisected back to the least that keeps as much


@dataclass(frozen=True)
class FitAnswer:
    """What llama.cpp's fit would set: its one stdout line, read."""

    ctx: int
    ngl: int  # -1: nothing changed (every layer on the devices)
    tensor_split: tuple[float, ...] | None
    overrides: tuple[tuple[str, str], ...]  # (pattern, buffer), in llama.cpp's order
    line: str

    def bench_flags(self) -> list[str]:
        """The same placement as llama-bench flags (`;` between -ot pairs, `/` in -ts)."""
        out = ["-ngl", str(self.ngl if self.ngl >= 0 else 999)]
        if self.tensor_split:
            out += ["-ts", "/".join(f"{x:g}" for x in self.tensor_split)]
        if self.overrides:
            out += ["-ot", ";".join(f"{p}={b}" for p, b in self.overrides)]
        return out

    def server_flags(self) -> list[str]:
        out = ["-ngl", str(self.ngl)]
        if self.tensor_split:
            out += ["-ts", ",".join(f"{x:g}" for x in self.tensor_split)]
        for p, b in self.overrides:
            out += ["-ot", f"{p}={b}"]
        return out


def parse_fit_line(stdout: str) -> FitAnswer:
    """The fitted arguments llama-fit-params prints (the last line that starts with -c). Raises ValueError."""
    line = next((ln.strip() for ln in reversed(stdout.splitlines()) if ln.strip().startswith("-c ")), None)
    if line is None:
        raise ValueError("no fitted arguments in llama-fit-params' output")
    argv = shlex.split(line)
    values = dict(zip(argv[::2], argv[1::2], strict=False))
    if "-c" not in values or "-ngl" not in values:
        raise ValueError(f"unexpected llama-fit-params output: {line}")
    ts = tuple(float(x) for x in values["-ts"].split(",")) if "-ts" in values else None
    overrides = []
    if "-ot" in values:
        for pair in values["-ot"].split(","):  # fit's own patterns hold no commas; a buffer may hold brackets
            pattern, _, buf = pair.rpartition("=")
            overrides.append((pattern, buf))
    return FitAnswer(int(values["-c"]), int(values["-ngl"]), ts, tuple(overrides), line)


def layer_devices(n_layer: int, ngl: int, split: Sequence[float], devices: Sequence[str]) -> dict[int, str]:
    """Layer slot (0..n_layer, n_layer = output) -> device, as llama.cpp's loader assigns them."""
    act = min(ngl if ngl >= 0 else n_layer + 1, n_layer + 1) if devices else 0
    start = n_layer + 1 - act
    total = sum(split) or 1.0
    cum, acc = [], 0.0
    for x in split:
        acc += x / total
        cum.append(acc)
    out = {}
    for il in range(n_layer + 1):
        if il < start or act == 0:
            out[il] = CPU
            continue
        i = bisect.bisect_right(cum, (il - start) / act)
        out[il] = devices[min(i, len(devices) - 1)]
    return out


def fit_placement(
    tensors: TensorSet, n_layer: int, answer: FitAnswer, devices: Sequence[str], free: Mapping[str, int]
) -> dict[str, str]:
    """Tensor name -> device under fit's answer. `devices`: llama.cpp's device order (RPC first, then CUDA);
    `free`: each one's free bytes (llama.cpp splits by free memory when fit printed no -ts). `n_layer`: the
    trunk's layer count (llama.cpp's n_layer(), NextN layers left out)."""
    split = answer.tensor_split or tuple(float(free.get(d, 1)) for d in devices)
    by_layer = layer_devices(n_layer, answer.ngl, split, devices)
    patterns = [(re.compile(p), b) for p, b in answer.overrides]
    out = {}
    for t in tensors.tensors:
        if t.layer is not None and t.layer >= n_layer:
            continue  # a NextN/MTP layer: not loaded
        if t.role is Role.TOKEN_EMBD:
            out[t.name] = CPU
            continue
        dev = by_layer[t.layer if t.layer is not None else n_layer]
        for rx, buf in patterns:
            if rx.search(t.name):
                dev = buf
                break
        out[t.name] = dev
    return out


def expert_bytes(tensors: TensorSet, placement: Mapping[str, str]) -> dict[str, int]:
    """Routed-expert bytes per device that holds any."""
    out: dict[str, int] = {}
    for name, dev in placement.items():
        t = tensors[name]
        if t.is_expert and dev != CPU:
            out[dev] = out.get(dev, 0) + t.nbytes
    return out


@dataclass(frozen=True)
class Comparison:
    """Expert bytes per device: llama.cpp's fit against runq's plan."""

    rows: tuple[tuple[str, int, int], ...]  # (device, fit's, runq's)

    @property
    def deficits(self) -> dict[str, int]:
        """Where runq keeps fewer expert bytes than fit, by how many."""
        return {d: f - r for d, f, r in self.rows if f > r}

    @property
    def fit_total(self) -> int:
        return sum(f for _, f, _ in self.rows)

    @property
    def runq_total(self) -> int:
        return sum(r for _, _, r in self.rows)


def compare(tensors: TensorSet, plan: Plan, fit: Mapping[str, str], devices: Sequence[str]) -> Comparison:
    ours = expert_bytes(tensors, plan.placement)
    theirs = expert_bytes(tensors, fit)
    return Comparison(tuple((d, theirs.get(d, 0), ours.get(d, 0)) for d in devices))


def replan(machine: Machine, tensors: TensorSet, hp: HParams, req: Request, before: Plan) -> Plan:
    """The same model planned again with other margins (its ubatch pinned by the caller), keeping the reasons the
    first plan gave for that ubatch."""
    p = plan(machine, tensors, hp, req)
    kept = tuple(r for r in before.reasons if r.startswith("ubatch ") and r not in p.reasons)
    return replace(p, reasons=(*p.reasons, *kept))


def grow_to(
    machine: Machine,
    tensors: TensorSet,
    hp: HParams,
    req: Request,
    p: Plan,
    cmp: Comparison,
    against: Callable[[Plan], Comparison],
) -> tuple[Plan, Request, Comparison]:
    """The plan with each short device's margin lowered just enough that it keeps at least fit's expert bytes:
    first by the whole difference (again while one is left, at most GROW_ROUNDS times), then back up to the
    smallest share of that cut that still does (bisection to a MiB): a partial layer may need less than the
    difference. Unchanged when it cannot be done within the other budgets (RAM)."""
    base = dict(req.gpu_margins)
    cut: dict[str, int] = {}

    def trial(share: float) -> tuple[Plan, Request, Comparison] | None:
        margins = {n: m - int(cut.get(n, 0) * share) for n, m in base.items()}
        r = replace(req, gpu_margins=tuple(sorted(margins.items())))
        q = replan(machine, tensors, hp, r, p)
        return (q, r, against(q)) if q.fits else None

    best: tuple[Plan, Request, Comparison] | None = None
    short = cmp.deficits
    for _ in range(GROW_ROUNDS):
        if not short:
            break
        for n, d in short.items():
            cut[n] = cut.get(n, 0) + d
        best = trial(1.0)
        if best is None:
            return p, req, cmp
        short = best[2].deficits
    if best is None or short:
        return p, req, cmp
    lo, hi = 0.0, 1.0
    while (hi - lo) * max(cut.values()) > MiB:
        mid = (lo + hi) / 2
        t = trial(mid)
        if t is not None and not t[2].deficits:
            hi, best = mid, t
        else:
            lo = mid
    return best
