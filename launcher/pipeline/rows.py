"""The catalog as rows for `runq models` and the TUI: sizes, the best quant for a machine, what is on disk.

Edge module (reads cached Hub headers and the Hugging Face cache; never asks the network).
Each row is planned by the same core calls as `runq plan`: exact sizes where the Hub's
headers are cached, estimates otherwise. Models that fit come first, largest download first.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.catalog import profiles as catalog
from launcher.catalog.estimate import param_counts
from launcher.catalog.profiles import Profile
from launcher.catalog.sources import profile_sources
from launcher.errors import DoesNotFitError, RunqError
from launcher.hub import headers as hub
from launcher.hub.local import LocalQuant
from launcher.machine.spec import Machine
from launcher.plan.choose import choose
from launcher.plan.types import CPU, Request


@dataclass(frozen=True)
class CatalogRow:
    profile: Profile
    best: str | None  # the quant `runq plan` would choose on this machine (None: nothing fits)
    best_bytes: int | None
    fit: str  # "GPU", "GPU + RAM", "RAM", "does not fit"
    tokens_per_s: float | None
    exact: bool  # sizes from cached GGUF headers (else estimated)
    on_disk: str  # "yes", "partial", "no"

    @property
    def fits(self) -> bool:
        return self.best is not None


def fit_badge(placement: dict[str, str], has_gpu: bool, expert_on_cpu: bool) -> str:
    if not has_gpu:
        return "RAM"
    return "GPU + RAM" if expert_on_cpu else "GPU"


def _row(p: Profile, machine: Machine, local: list[LocalQuant]) -> CatalogRow:
    try:
        found = hub.exact_sources(p, network=False)
        sources = profile_sources(p, found.sources, found.available)
    except RunqError:
        sources = profile_sources(p)
    have = [q for q in local if q.repo == p.repo]
    on_disk = "yes" if any(q.complete for q in have) else "partial" if have else "no"
    try:
        c = choose(p.display_name, machine, sources, Request(ctx=p.default_ctx)).chosen
    except DoesNotFitError:
        return CatalogRow(p, None, None, "does not fit", None, any(s.exact for s in sources), on_disk)
    on_cpu = any(d == CPU and c.source.tensors[n].is_expert for n, d in c.plan.placement.items())
    badge = fit_badge(c.plan.placement, bool(c.plan.gpu_devices), on_cpu)
    return CatalogRow(p, c.source.name, c.source.size_bytes, badge, c.plan.predicted_tg_tps, c.source.exact, on_disk)


def catalog_rows(machine: Machine, local: list[LocalQuant] | None = None) -> list[CatalogRow]:
    """Every catalog model planned for this machine: what fits first (largest download first), then the rest."""
    if local is None:
        from launcher.hub.local import scan_hf_cache

        local = scan_hf_cache()[0]
    rows = [_row(p, machine, local) for p in catalog.load_profiles()]
    fitting = sorted((r for r in rows if r.fits), key=lambda r: -(r.best_bytes or 0))
    rest = sorted((r for r in rows if not r.fits), key=lambda r: min(q.size_bytes for q in r.profile.quants))
    return fitting + rest


def row_json(r: CatalogRow) -> dict[str, object]:
    p = r.profile
    params, active = param_counts(p)
    by_size = p.quants_by_size()
    return {
        "name": p.name,
        "display_name": p.display_name,
        "aliases": list(p.aliases),
        "repo": p.repo,
        "architecture": p.arch.name,
        "params_b": round(params, 1),
        "active_params_b": round(active, 1),
        "default_ctx": p.default_ctx,
        "smallest": {"quant": by_size[0].name, "size_bytes": by_size[0].size_bytes},
        "largest": {"quant": by_size[-1].name, "size_bytes": by_size[-1].size_bytes},
        "best": (
            {"quant": r.best, "size_bytes": r.best_bytes, "fit": r.fit, "tokens_per_s": round(r.tokens_per_s or 0, 1)}
            if r.best
            else None
        ),
        "fits": r.fits,
        "exact": r.exact,
        "on_disk": r.on_disk,
        "sampling": p.sampling.model_dump(exclude_none=True),
        "modes": {m: s.model_dump(exclude_none=True) for m, s in p.modes.items()},
        "quants": [
            {"name": q.name, "size_bytes": q.size_bytes, "shards": q.shards, "size_source": q.size_source}
            for q in by_size
        ],
    }


def rows_text(rows: list[CatalogRow], machine_line: str) -> str:
    from launcher.units import fmt_bytes

    head = f"{'model':<22} {'params':>12}  {'smallest':<21} {'largest':<21} {'best here':<37} on disk"
    lines = [f"Models for {machine_line} (fitting first; `runq plan NAME` explains):", head]
    for r in rows:
        p = r.profile
        params, active = param_counts(p)
        by_size = p.quants_by_size()
        small, large = by_size[0], by_size[-1]
        best = f"{r.best} {fmt_bytes(r.best_bytes or 0)} {r.fit}, {r.tokens_per_s:.0f} t/s" if r.best else r.fit
        lines.append(
            f"{p.name:<22} {f'{params:.4g}B/{active:.2g}B':>12}  "
            f"{f'{small.name} {fmt_bytes(small.size_bytes)}':<21} {f'{large.name} {fmt_bytes(large.size_bytes)}':<21} "
            f"{best:<37} {r.on_disk}"
        )
    n_fit = sum(r.fits for r in rows)
    estimated = sum(not r.exact for r in rows)
    note = f"; {estimated} planned from estimates (`runq plan NAME` reads the Hub's headers)" if estimated else ""
    lines.append(f"{n_fit} of {len(rows)} fit{note}.")
    return "\n".join(lines)
