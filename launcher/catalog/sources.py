"""The quants of a model as planning sources: exact tensors from GGUF headers, or estimated from the profile.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from launcher.catalog.chat_templates import ChatFormat
from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import Profile, Sampling
from launcher.model.hparams import HParams
from launcher.model.tensors import TensorSet


@dataclass(frozen=True)
class ModelSource:
    """The tensors of one quant (or one local file) and whether they are exact."""

    name: str  # quant name, or the file name
    tensors: TensorSet
    hparams: HParams
    exact: bool
    size_bytes: int  # published or file size
    sampling: Sampling | None = None  # the GGUF's own general.sampling.* defaults, when its header was read
    chat: ChatFormat | None = None  # its chat template (present, or the built-in its tokens match); None: not read


def profile_sources(
    profile: Profile,
    exact: Mapping[str, ModelSource] | None = None,
    available: tuple[str, ...] | None = None,
) -> list[ModelSource]:
    """Every quant of a profile, exact where headers were read, estimated otherwise; smallest first.
    `available` (the quants the repo really has) drops profile quants missing from the repo and adds
    repo quants the profile does not know, when their headers were read."""
    exact = exact or {}
    out = []
    for q in profile.quants_by_size():
        if available is not None and q.name not in available:
            continue
        if q.name in exact:
            out.append(exact[q.name])
        else:
            est = estimate(profile, q)
            out.append(ModelSource(q.name, est.tensors, est.hparams, exact=False, size_bytes=q.size_bytes))
    known = {q.name for q in profile.quants}
    out += [s for name, s in exact.items() if name not in known]
    return sorted(out, key=lambda s: s.size_bytes)
