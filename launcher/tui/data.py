"""What the TUI shows, computed by the same core calls as the CLI (no planning logic of its own, no Textual).

Each function is safe to call from a worker thread: it returns values or raises RunqError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from launcher import catalog, hub
from launcher.catalog import Profile
from launcher.choose import Candidate, Choice, ModelSource, choose, profile_sources
from launcher.errors import DoesNotFitError, RunqError
from launcher.local_models import scan_hf_cache
from launcher.machine import Machine
from launcher.model import open_local
from launcher.planner import CPU, Plan, Request
from launcher.tensors import Role


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


@dataclass(frozen=True)
class Target:
    """A model the screens plan: its sources (every quant, or one file), and where they came from."""

    key: str
    title: str
    profile: Profile | None
    sources: tuple[ModelSource, ...]
    sizes: str
    default_ctx: int
    path: Path | None = None


def fit_badge(plan: Plan, tensors: object) -> str:
    if not plan.fits:
        return "does not fit"
    if not plan.gpu_devices:
        return "RAM"
    cpu_weights = [n for n, d in plan.placement.items() if d == CPU]
    heavy = [n for n in cpu_weights if tensors[n].role is not Role.TOKEN_EMBD]  # type: ignore[index]
    return "GPU" if not heavy else "GPU + RAM"


def load_target(key: str, *, network: bool = False) -> Target:
    """A catalog model (cached Hub headers when there are some, estimates otherwise) or a local file."""
    if key.endswith(".gguf"):
        model = open_local(key)
        known = catalog.profile_for_file(key)
        profile = known[0] if known else None
        name = Path(key).name
        src = ModelSource(name, model.tensors, model.hparams, exact=True, size_bytes=model.file_bytes)
        ctx = min(profile.default_ctx if profile else 16384, model.hparams.n_ctx_train or 16384)
        return Target(key, model.hparams.name or name, profile, (src,), "exact: the file's header", ctx, Path(key))
    profile = catalog.require_profile(key)
    found = hub.exact_sources(profile, network=network)
    sources = profile_sources(profile, found.sources, found.available)
    return Target(key, profile.display_name, profile, tuple(sources), found.status, profile.default_ctx)


def plan_target(
    machine: Machine, target: Target, ctx: int, cache_type: str = "f16"
) -> tuple[Choice | None, list[Candidate], str | None]:
    """(the choice, every candidate, the reason nothing fits) for this context and KV cache type."""
    req = Request(ctx=ctx, cache_type_k=cache_type, cache_type_v=cache_type)
    try:
        choice = choose(target.title, machine, list(target.sources), req)
    except DoesNotFitError as e:
        return None, list(e.detail or []), e.message + (f" ({e.hint})" if e.hint else "")
    return choice, list(choice.candidates), None


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
