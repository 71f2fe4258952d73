"""What the TUI shows, from the same pipeline as the CLI (no planning logic of its own, no Textual).

Each function is safe to call from a worker thread: it returns values or raises RunqError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.catalog import profiles as catalog
from launcher.errors import DoesNotFitError, RunqError
from launcher.hub.local import scan_hf_cache
from launcher.machine.spec import Machine
from launcher.pipeline.plan import Ask, Planned, plan
from launcher.pipeline.rows import on_disk, plan_row
from launcher.pipeline.target import ModelTarget
from launcher.plan.choose import Candidate
from launcher.plan.inputs import PlanInputs
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


def plan_target(
    machine: Machine,
    target: ModelTarget,
    ctx: int,
    cache_type: str = "f16",
    *,
    project: bool = False,
    quant: str | None = None,
) -> tuple[Planned | None, list[Candidate], str | None]:
    """(the pipeline's plan, every candidate, the reason nothing fits) for this context and KV cache type, the
    same pipeline as `runq plan` (a bad value raises UsageError). project=True places the chosen quant again on
    llama.cpp's own sizes when a build is here, as the CLI does; the first screen does not."""
    inputs = PlanInputs(ctx=ctx, cache_type_k=cache_type, cache_type_v=cache_type)
    ask = Ask(target.key, inputs=inputs, quant=quant, network=False, project=project)
    try:
        planned = plan(ask, machine, target=target)
    except DoesNotFitError as e:
        return None, list(e.detail or []), e.message + (f" ({e.hint})" if e.hint else "")
    return planned, list(planned.choice.candidates), None


def machine_text(m: Machine) -> str:
    gpus = ", ".join(f"{g.name} {fmt_bytes(g.free_bytes)}" for g in m.gpus) or f"no GPU ({m.gpu_note or 'none'})"
    kind = "described" if m.source != "probed" else "this machine"
    return f"{kind}: {gpus}; {fmt_bytes(m.ram_available_bytes)} RAM available; {m.cores} cores"


NOT_FITTING = ("does not fit", "damaged", "")


def fits_first(rows: list[ModelRow]) -> list[ModelRow]:
    """What fits this machine first, catalog models and quants on disk alike (largest download first: the most
    model for it), then the rest in their order."""
    fitting = sorted((r for r in rows if r.fit not in NOT_FITTING), key=lambda r: -(r.download_bytes or 0))
    return fitting + [r for r in rows if r.fit in NOT_FITTING]


def model_rows(machine: Machine) -> list[ModelRow]:
    """The catalog and the GGUF files on disk, each planned by the pipeline exactly as `runq models` plans it."""
    rows = []
    local, _ = scan_hf_cache()
    for p in catalog.load_profiles():
        r = plan_row(p.name, machine)
        rows.append(
            ModelRow(
                key=p.name,
                title=p.display_name,
                kind="catalog",
                best=r.best or "",
                fit=r.fit,
                download_bytes=r.best_bytes,
                on_disk=on_disk(p, local),
            )
        )
    for q in local:
        row = ModelRow(
            key=str(q.first), title=f"{q.repo} {q.name}", kind="local", best=q.name,
            fit="damaged" if not q.complete else "", download_bytes=q.bytes_on_disk,
            on_disk="yes" if q.complete else "partial", problem=q.problem,
        )  # fmt: skip
        if q.complete:
            try:
                row = replace(row, fit=plan_row(str(q.first), machine).fit)
            except RunqError as e:
                row = replace(row, fit="damaged", problem=e.message)
        rows.append(row)
    return fits_first(rows)
