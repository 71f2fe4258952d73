"""The catalog as rows for `runq models` and the TUI: sizes, the best quant for a machine, what is on disk.

An edge (reads cached Hub headers and the Hugging Face cache; never asks the network). Each row is the pipeline's
own plan of that model (pipeline/plan.py), so its quant, badge and tokens/s are what `runq plan` says for the same
machine: exact sizes where the Hub's headers are cached, estimates otherwise. Models that fit come first,
largest download first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.catalog import profiles as catalog
from launcher.catalog.estimate import param_counts
from launcher.catalog.profiles import Profile
from launcher.errors import DoesNotFitError, RunqError
from launcher.hub.local import LocalQuant
from launcher.machine.spec import Machine
from launcher.pipeline.plan import Ask, Planned, plan
from launcher.view.plan import fit_badge


@dataclass(frozen=True)
class Row:
    """One model planned for a machine by the pipeline, or why it could not be."""

    key: str  # profile name or file path
    planned: Planned | None
    problem: str | None = None  # nothing fits (with what would), or the file is damaged
    exact: bool = False  # the sizes came from GGUF headers

    @property
    def best(self) -> str | None:
        return self.planned.quant if self.planned else None

    @property
    def best_bytes(self) -> int | None:
        return self.planned.chosen.source.size_bytes if self.planned else None

    @property
    def fit(self) -> str:
        return fit_badge(self.planned.chosen) if self.planned else "does not fit"

    @property
    def tokens_per_s(self) -> float | None:
        return self.planned.plan.predicted_tg_tps if self.planned else None


def plan_row(key: str, machine: Machine, *, ctx: int | None = None) -> Row:
    """`key` planned as `runq plan KEY` would (offline: cached headers only), at the model's default context."""
    from launcher.plan.inputs import PlanInputs

    try:
        planned = _plan_offline(Ask(key, inputs=PlanInputs(ctx=ctx), network=False), machine)
    except DoesNotFitError as e:
        exact = any(c.source.exact for c in e.detail or [])
        return Row(key, None, e.message + (f" ({e.hint})" if e.hint else ""), exact)
    return Row(key, planned, exact=planned.chosen.source.exact)


def _plan_offline(ask: Ask, machine: Machine) -> Planned:
    """The pipeline on cached headers; a catalog model whose cached headers cannot be read: on published sizes."""
    try:
        return plan(ask, machine)
    except DoesNotFitError:
        raise
    except RunqError:
        if ask.model.endswith(".gguf"):
            raise
        return plan(replace(ask, estimate=True), machine)


@dataclass(frozen=True)
class CatalogRow:
    profile: Profile
    row: Row
    on_disk: str  # "yes", "partial", "no"

    @property
    def fits(self) -> bool:
        return self.row.planned is not None

    @property
    def best(self) -> str | None:
        return self.row.best

    @property
    def best_bytes(self) -> int | None:
        return self.row.best_bytes

    @property
    def fit(self) -> str:
        return self.row.fit

    @property
    def tokens_per_s(self) -> float | None:
        return self.row.tokens_per_s

    @property
    def exact(self) -> bool:
        return self.row.exact


def on_disk(p: Profile, local: list[LocalQuant]) -> str:
    have = [q for q in local if q.repo == p.repo]
    return "yes" if any(q.complete for q in have) else "partial" if have else "no"


def catalog_rows(machine: Machine, local: list[LocalQuant] | None = None) -> list[CatalogRow]:
    """Every catalog model planned for this machine: what fits first (largest download first), then the rest."""
    if local is None:
        from launcher.hub.local import scan_hf_cache

        local = scan_hf_cache()[0]
    rows = [CatalogRow(p, plan_row(p.name, machine), on_disk(p, local)) for p in catalog.load_profiles()]
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


def billions(x: float, digits: int) -> str:
    """A parameter count in billions to `digits` significant digits, never in exponent form (Kimi-K3: 100B active
    is '100', not '1e+02')."""
    return f"{x:.{digits}g}" if x < 10**digits else f"{x:.0f}"


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
            f"{p.name:<22} {f'{billions(params, 4)}B/{billions(active, 2)}B':>12}  "
            f"{f'{small.name} {fmt_bytes(small.size_bytes)}':<21} {f'{large.name} {fmt_bytes(large.size_bytes)}':<21} "
            f"{best:<37} {r.on_disk}"
        )
    n_fit = sum(r.fits for r in rows)
    estimated = sum(not r.exact for r in rows)
    note = f"; {estimated} planned from estimates (`runq plan NAME` reads the Hub's headers)" if estimated else ""
    lines.append(f"{n_fit} of {len(rows)} fit{note}.")
    return "\n".join(lines)
