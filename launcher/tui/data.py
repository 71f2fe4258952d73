"""What the TUI shows, computed by the same core calls as the CLI (no planning logic of its own, no Textual).

Each function is safe to call from a worker thread: it returns values or raises RunqError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.catalog import profiles as catalog
from launcher.errors import DoesNotFitError, RunqError
from launcher.hub.local import scan_hf_cache
from launcher.machine.spec import Machine
from launcher.model.tensors import Role
from launcher.pipeline.target import ModelTarget, resolve
from launcher.plan.choose import Candidate, Choice, choose
from launcher.plan.inputs import PlanInputs, buffers_of, planning_request
from launcher.plan.types import CPU, Plan
from launcher.units import fmt_bytes


@dataclass(frozen=True)
class ModelRow:
    key: str  # profile name, or the path of a local file
    title: str
    kind: str  # "catalog" or "local"
    best: str  # best quant on this machine ("" if none fits)
    fit: str  # "GPU", "GPU + RAM", "RAM", "does not fit", "damaged"
    download_bytes: int | None  # the best quant's size (catalog) or what is on disk (local)
    on_disk: str  # "yes", "partial", "no"
    problem: str | None = None


def fit_badge(plan: Plan, tensors: object) -> str:
    if not plan.fits:
        return "does not fit"
    if not plan.gpu_devices:
        return "RAM"
    cpu_weights = [n for n, d in plan.placement.items() if d == CPU]
    heavy = [n for n in cpu_weights if tensors[n].role is not Role.TOKEN_EMBD]  # type: ignore[index]
    return "GPU" if not heavy else "GPU + RAM"


def load_target(key: str, *, network: bool = False) -> ModelTarget:
    """A catalog model (cached Hub headers when there are some, estimates otherwise) or a local file: the same
    resolution as the CLI's (target.resolve); the first screens never wait on the network unless asked."""
    return resolve(key, network=network)


def plan_target(
    machine: Machine, target: ModelTarget, ctx: int, cache_type: str = "f16", *, project: bool = False
) -> tuple[Choice | None, list[Candidate], str | None]:
    """(the choice, every candidate, the reason nothing fits) for this context and KV cache type; the request is
    checked the way the CLI checks it (a bad value raises UsageError). project=True places the chosen quant again
    on llama.cpp's own sizes when a build is here (fitparams, as the CLI does); the first screen does not."""
    inputs = PlanInputs(ctx=ctx, cache_type_k=cache_type, cache_type_v=cache_type)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    try:
        choice = choose(target.name, machine, list(target.sources), req)
        if project:
            from launcher.llama.fit import cached_bin_dir
            from launcher.pipeline.projection import project_target

            choice, _ = project_target(choice, machine, req, target, cached_bin_dir())
    except DoesNotFitError as e:
        return None, list(e.detail or []), e.message + (f" ({e.hint})" if e.hint else "")
    return choice, list(choice.candidates), None


def machine_text(m: Machine) -> str:
    gpus = ", ".join(f"{g.name} {fmt_bytes(g.free_bytes)}" for g in m.gpus) or f"no GPU ({m.gpu_note or 'none'})"
    kind = "described" if m.source != "probed" else "this machine"
    return f"{kind}: {gpus}; {fmt_bytes(m.ram_available_bytes)} RAM available; {m.cores} cores"


def fits_first(rows: list[ModelRow]) -> list[ModelRow]:
    """What fits this machine first (largest download first: the most model for it), then the rest."""
    fitting = sorted((r for r in rows if r.best), key=lambda r: -(r.download_bytes or 0))
    return fitting + [r for r in rows if not r.best]


def model_rows(machine: Machine) -> list[ModelRow]:
    rows = []
    local, _ = scan_hf_cache()
    for p in catalog.load_profiles():
        target = load_target(p.name)
        choice, _, _ = plan_target(machine, target, target.default_ctx)
        best = choice.chosen if choice else None
        have = [q for q in local if q.repo == p.repo]
        on_disk = "yes" if any(q.complete for q in have) else "partial" if have else "no"
        rows.append(
            ModelRow(
                key=p.name,
                title=p.display_name,
                kind="catalog",
                best=best.source.name if best else "",
                fit=fit_badge(best.plan, best.source.tensors) if best else "does not fit",
                download_bytes=best.source.size_bytes if best else None,
                on_disk=on_disk,
            )
        )
    rows = fits_first(rows)
    for q in local:
        row = ModelRow(
            key=str(q.first),
            title=f"{q.repo} {q.name}",
            kind="local",
            best=q.name,
            fit="damaged" if not q.complete else "",
            download_bytes=q.bytes_on_disk,
            on_disk="yes" if q.complete else "partial",
            problem=q.problem,
        )
        if q.complete:
            try:
                t = load_target(str(q.first))
                choice, _, _ = plan_target(machine, t, t.default_ctx)
                fit = fit_badge(choice.chosen.plan, choice.chosen.source.tensors) if choice else "does not fit"
                row = replace(row, fit=fit)
            except RunqError as e:
                row = replace(row, fit="damaged", problem=e.message)
        rows.append(row)
    return rows
