"""llama.cpp's own sizes for a resolved target: the model file, or a header-only replica of a Hub quant.

Edge (writes replicas, runs llama-fit-params through llama/fit.py).
"""

from __future__ import annotations

from pathlib import Path

from launcher.catalog.sources import ModelSource
from launcher.errors import DoesNotFitError
from launcher.hub.replica import hub_replica
from launcher.llama.fit import project_sizes
from launcher.machine.spec import Machine
from launcher.pipeline.target import ModelTarget
from launcher.plan.choose import Choice
from launcher.plan.types import Request


def project_target(
    choice: Choice, machine: Machine, req: Request, target: ModelTarget, bin_dir: Path | None
) -> tuple[Choice, str]:
    """project_sizes() for a resolved target (the CLI's and the TUI's): a local file, or a Hub quant whose headers
    are cached. Raises DoesNotFitError when, on llama.cpp's sizes, nothing that was tried fits."""
    profile = target.profile
    repo = profile.repo if profile and target.model_path is None else None
    first_paths = dict(target.first_paths)
    if profile and repo:
        for q in profile.quants:
            first_paths.setdefault(q.name, q.path)

    def model_file(src: ModelSource) -> Path | None:
        if target.model_path is not None:
            return target.model_path
        if repo and src.exact and src.name in first_paths:
            return hub_replica(repo, first_paths[src.name])
        return None

    refined, note = project_sizes(choice, machine, req, bin_dir, model_file, pinned=target.pinned is not None)
    p = refined.chosen.plan
    if not p.fits:
        raise DoesNotFitError(
            f"{refined.model} ({refined.chosen.source.name}) does not fit this machine at {p.ctx:,} tokens of "
            f"context on llama.cpp's own sizes: " + "; ".join(p.problems),
            hint="try a smaller --ctx or --quant",
            detail=list(refined.candidates),
        )
    return refined, note
