"""What to plan: a model name (a profile; its quants from the Hub's headers, the cache, or estimates) or a local
.gguf file, resolved once for the CLI and the TUI alike.

An edge (it reads files and, for a model name, the Hub). The answer carries every quant as a ModelSource, the
context a plan starts from, where the sizes came from, and the warnings to show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from launcher.catalog import profiles as catalog
from launcher.catalog.profiles import Profile
from launcher.catalog.sources import ModelSource, profile_sources
from launcher.errors import UsageError

MAX_NAME = 255  # a longer model "name" is neither a profile nor a file name this system allows
FALLBACK_CTX = 16384


@dataclass(frozen=True)
class ModelTarget:
    key: str  # what the user gave: a profile name or a file path
    name: str  # what to call the model in messages
    profile: Profile | None
    sources: tuple[ModelSource, ...]
    model_path: Path | None  # a local file, when the target is one
    pinned: str | None  # the quant pinned with --quant
    default_ctx: int
    sizes: str  # where the sizes came from, said to the user
    first_paths: dict[str, str] = field(default_factory=dict)  # quant -> repo path of its first file
    warnings: tuple[str, ...] = ()


def looks_like_path(text: str) -> bool:
    """A file, not a model name or a Hub repo id ('unsloth/Qwen3.6-35B-A3B-GGUF', planned from its headers)."""
    if text.endswith(".gguf"):
        return True
    if "/" in text:
        try:
            return Path(text).exists() or not catalog.REPO_ID_RE.fullmatch(text)
        except OSError:
            return True
    try:
        return Path(text).exists()
    except OSError:  # a name too long to be a file
        return False


def check_model_name(text: str) -> None:
    if not text.strip():
        raise UsageError("no model given", hint="a model name (see `runq models`) or the path of a .gguf file")
    if len(text) > MAX_NAME:
        raise UsageError(f"a model name of {len(text):,} characters is neither a known model nor a file",
                         hint="see `runq models`, or give the path of a .gguf file")  # fmt: skip


HUB_URL_RE = re.compile(r"https?://(?:www\.)?(?:huggingface\.co|hf\.co)/(?P<repo>[^/?#]+/[^/?#]+)(?:[/?#].*)?")


def repo_of_url(text: str) -> str:
    """`https://huggingface.co/ORG/REPO` (a page of it, /tree/main, …) as the repo id ORG/REPO; other text as is."""
    m = HUB_URL_RE.fullmatch(text.strip())
    return m.group("repo") if m else text


def check_file(path_text: str) -> None:
    """A path the user gave that is not there is bad usage (exit 2), with what runq takes instead (a path the
    system cannot even look up, e.g. too long, is the GGUF reader's to explain)."""
    try:
        missing = not Path(path_text).exists()
    except OSError:
        return
    if missing:
        raise UsageError(
            f"{path_text}: no such file",
            hint="give the path of a .gguf file (shard 1 of a split set), a model name (`runq models`) or a Hub "
            "repo id such as unsloth/Qwen3.6-35B-A3B-GGUF",
        )


def resolve(model: str, *, quant: str | None = None, estimate: bool = False, network: bool = True) -> ModelTarget:
    """A local file (exact, from its header) or a profile (every quant; exact where headers could be read).
    network=False reads only cached headers; estimate=True reads none."""
    check_model_name(model)
    model = repo_of_url(model)
    if looks_like_path(model):
        if quant:
            raise UsageError(
                "--quant applies to a model name, not to a file", hint="give a model name, or another file"
            )
        return _local(model)
    profile = require_profile(model)
    if estimate:
        from launcher.hub.headers import ExactSources

        remote = ExactSources({}, "estimated: --estimate", (), None, {})
    else:
        from launcher.hub.headers import exact_sources

        remote = exact_sources(profile, network=network)
    sources = profile_sources(profile, remote.sources, remote.available)
    pinned = pin_quant(profile, quant, [s.name for s in sources]) if quant else None
    return ModelTarget(
        key=model, name=profile.display_name, profile=profile, sources=tuple(sources), model_path=None,
        pinned=pinned, default_ctx=profile.default_ctx, sizes=remote.status, first_paths=remote.first_paths,
        warnings=remote.warnings,
    )  # fmt: skip


def require_profile(model: str) -> Profile:
    """A catalog profile by name, alias or repo id; any other Hub repo id ('unsloth/Some-Model-GGUF') becomes a
    profile read from the repo's listing and GGUF headers; a typo gets the closest names."""
    if catalog.find_profile(model) is None and catalog.REPO_ID_RE.fullmatch(model):
        from launcher.hub.repo import profile_for_repo

        return profile_for_repo(model)
    return catalog.require_profile(model)


def _local(path_text: str) -> ModelTarget:
    from launcher.catalog.chat_templates import chat_format
    from launcher.catalog.sampling import from_gguf
    from launcher.model.shards import open_local

    check_file(path_text)
    model = open_local(path_text)
    found = catalog.profile_for_file(path_text)
    profile = found[0] if found else None
    file_name = Path(path_text).name
    src = ModelSource(
        file_name, model.tensors, model.hparams, True, model.file_bytes, sampling=from_gguf(model.metadata),
        chat=chat_format(model.metadata),
    )  # fmt: skip
    trained = model.hparams.n_ctx_train or FALLBACK_CTX
    ctx = min(profile.default_ctx if profile else FALLBACK_CTX, trained)
    name = profile.display_name if profile else (model.hparams.name or file_name)
    return ModelTarget(
        key=path_text, name=name, profile=profile, sources=(src,), model_path=Path(path_text).resolve(),
        pinned=None, default_ctx=ctx, sizes="exact: from the file's GGUF header",
    )  # fmt: skip


def with_quant(target: ModelTarget, quant: str) -> ModelTarget:
    """The target with --quant pinned (a resolved target, planned again for one quant)."""
    from dataclasses import replace

    if target.profile is None or target.model_path is not None:
        raise UsageError("--quant applies to a model name, not to a file", hint="give a model name, or another file")
    return replace(target, pinned=pin_quant(target.profile, quant, [s.name for s in target.sources]))


def pin_quant(profile: Profile, wanted: str, available: list[str]) -> str:
    """--quant names a profile quant (any spelling) or one the repo has."""
    for name in available:
        if name.upper() == wanted.upper():
            return name
    name = profile.quant(wanted).name  # raises with the list of known quants
    if name not in available:
        raise UsageError(f"{profile.repo} has no {name} files", hint="choose one of: " + ", ".join(available))
    return name


def expected_model_path(repo: str, path: str) -> str:
    """Where a repo file is in the Hugging Face cache; before the download a placeholder that says so, the one
    `runq run --dry-run` prints (the snapshot's folder is named after a commit only the download learns)."""
    from launcher.paths import hf_cache_dir, hf_repo_dir

    root = hf_repo_dir(repo) / "snapshots"
    for snap in sorted(root.glob("*")) if root.is_dir() else []:
        if (snap / path).is_file():
            return str(snap / path)
    return str(hf_cache_dir() / "<after download>" / path)
