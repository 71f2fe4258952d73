"""A profile for any Unsloth-style GGUF repo outside the catalog: quants from its listing, the rest from headers.

Edge module (network through launcher.hub). `runq plan unsloth/Some-Model-GGUF` lists the
repo, groups its .gguf files into quants (a folder per split quant, a tag at the end of
a single file's name), reads every quant's GGUF header by range requests (cached), and
returns a Profile whose quants all have exact sizes: the architecture, context and
sampling defaults (`general.sampling.*`) come from the headers, nothing is guessed.
"""

from __future__ import annotations

from launcher.catalog.profiles import ArchSpec, Profile, QuantSpec, Sampling
from launcher.errors import GGUFError, HubError
from launcher.hub.client import list_repo
from launcher.hub.headers import read_many
from launcher.hub.layout import group_quants
from launcher.model.shards import GGUFModel, combine

DEFAULT_CTX = 16384


def profile_for_repo(repo: str, revision: str = "main") -> Profile:
    """The repo as a profile: every quant whose headers could be read, smallest first."""
    listing = list_repo(repo, revision)
    quants = group_quants(listing.files)
    if not quants:
        raise HubError(
            f"{repo} has no GGUF files",
            hint="give a repo with .gguf files (Unsloth's are named unsloth/<Model>-GGUF), or a local .gguf path",
        )
    headers = read_many(listing, quants)
    models: dict[str, GGUFModel] = {}
    failures: list[str] = []
    for q in quants:
        got = headers[q.name]
        if isinstance(got, Exception):
            failures.append(f"{q.name}: {got}")
            continue
        try:
            models[q.name] = combine(got)
        except GGUFError as e:
            failures.append(f"{q.name}: {e.message}")
    if not models:
        raise HubError(f"cannot read the GGUF headers of {repo}: {failures[0]}", hint="check the repo and retry")
    first = models[next(q.name for q in quants if q.name in models)]
    hp = first.hparams
    specs = [
        QuantSpec(name=q.name, path=q.first.path, size_bytes=q.size_bytes, confirmed=True, size_source="hub")
        for q in quants
        if q.name in models
    ]
    params, active = _param_counts(first)
    notes = f"Read from {repo}'s listing and GGUF headers (not in runq's catalog)."
    if failures:
        notes += f" Left out (headers unreadable): {'; '.join(failures)}."
    # Built without validation: the name is the repo id (so `runq pull REPO` finds it again) and the architecture
    # may be one runq has no estimate for — every quant here has exact sizes from its headers, none is estimated.
    arch = ArchSpec.model_construct(
        name=hp.arch, n_layer=hp.n_layer, n_embd=hp.n_embd, n_vocab=hp.n_vocab, context_length=hp.n_ctx_train,
        n_head=max(hp.n_head, default=0), n_head_kv=max(hp.n_head_kv, default=0), key_length=hp.key_length,
        value_length=hp.value_length, n_ff_exp=hp.n_ff_exp, n_expert=hp.n_expert, n_expert_used=hp.n_expert_used,
        n_expert_shared=hp.n_expert_shared, n_dense_lead=hp.n_dense_lead, nextn_layers=hp.n_layer_nextn,
        shape_source="gguf",
    )  # fmt: skip
    return Profile.model_construct(
        name=repo,
        display_name=hp.name or repo.split("/", 1)[1].removesuffix("-GGUF"),
        repo=repo,
        revision=revision,
        params_b=params / 1e9,
        active_b=active / 1e9,
        default_ctx=min(DEFAULT_CTX, hp.n_ctx_train or DEFAULT_CTX),
        notes=notes,
        arch=arch,
        sampling=Sampling(),  # none of runq's: the GGUF's own general.sampling.* apply (see launcher.sampling)
        quants=specs,
    )


def _param_counts(m: GGUFModel) -> tuple[int, int]:
    """(total, active per token) parameters from the tensor shapes."""
    total = active = 0
    frac = m.hparams.expert_fraction
    for t in m.tensors.tensors:
        n = 1
        for d in t.shape:
            n *= d
        total += n
        active += int(n * frac) if t.is_expert else n
    return total, active
