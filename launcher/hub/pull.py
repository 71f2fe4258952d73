"""Pull one quant of a model: the one download path for `runq pull`, `runq run --auto`, services and the TUI.

An edge (network and disk, through hub and download). Order: list the repo, see what is already here, check the
free disk, download what is missing (continuing interrupted files), then verify the finished set: every file
has the Hub's size and the shards form one valid GGUF model. Progress goes to callbacks; nothing prints here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.catalog.profiles import Profile
from launcher.errors import GGUFError, HubError
from launcher.hub import client, transfer
from launcher.hub.layout import RemoteFile, RemoteQuant, quants_by_name
from launcher.paths import hf_cache_dir


@dataclass(frozen=True)
class PullState:
    """One quant of one repo, and how much of it is here."""

    profile: Profile
    listing: client.Listing
    quant: RemoteQuant
    dest: Path | None  # None: the Hugging Face cache
    plan: transfer.PullPlan

    @property
    def complete(self) -> bool:
        return len(self.plan.complete) == len(self.quant.files)

    @property
    def where(self) -> Path:
        return self.dest or hf_cache_dir()


@dataclass(frozen=True)
class Pulled:
    first: Path  # the first (or only) file: what llama.cpp is given
    files: int
    tensors: int


def list_quants(profile: Profile) -> tuple[client.Listing, dict[str, RemoteQuant]]:
    """The repo's listing and its quants by name (raises errors.Offline when the Hub cannot be reached)."""
    listing = client.list_repo(profile.repo)
    return listing, quants_by_name(profile, listing.files)


def state(profile: Profile, quant: str, dest: Path | None = None, listing: client.Listing | None = None) -> PullState:
    """What is here and what is missing of one quant (lists the repo unless `listing` is given)."""
    if listing is None:
        listing, quants = list_quants(profile)
    else:
        quants = quants_by_name(profile, listing.files)
    if quant not in quants:
        raise HubError(f"{profile.repo} has no {quant} files", hint="choose one of: " + ", ".join(quants))
    rq = quants[quant]
    return PullState(profile, listing, rq, dest, transfer.plan_pull(listing, rq, dest))


def pull(
    st: PullState,
    *,
    disk_free: int | None = None,
    on_file: Callable[[int, int, RemoteFile], None] = lambda i, n, f: None,
    on_bytes: Callable[[int, int], None] = lambda done, total: None,
    notice: Callable[[str], None] | None = None,
) -> Pulled:
    """Download what is missing (after checking the disk) and verify the whole set; `on_file(i, n, file)` is
    called before each file is fetched, `on_bytes(done, total)` as its bytes arrive, `notice(text)` when it
    waits for another download of the same file."""
    transfer.check_disk(st.plan, st.dest, disk_free)
    paths = _present(st)
    if paths is None:
        n = len(st.quant.files)
        numbered = iter(range(1, n + 1))
        paths = transfer.download(
            st.listing, st.quant, st.dest, lambda f: on_file(next(numbered), n, f), on_bytes, notice=notice
        )
    return verify(st, paths)


def _present(st: PullState) -> list[Path] | None:
    """Every file's path when all are here whole already (the Hub's sha256, not only its size), else None."""
    if not st.complete:
        return None
    found = []
    for f in st.quant.files:
        p = transfer.local_path(st.listing, f, st.dest)
        if p is None or p.stat().st_size != f.size:
            return None
        found.append(p)
    return found


def verify(st: PullState, paths: list[Path]) -> Pulled:
    """Each file has the Hub's size, and the shards read as one model (headers, split keys, tensor table)."""
    from launcher.model.shards import open_local

    for f, p in zip(st.quant.files, paths, strict=True):
        if p.stat().st_size != f.size:
            raise HubError(f"{f.path}: not the Hub's size ({f.size:,} B) after the download",
                           hint="run `runq pull` again to repair it")  # fmt: skip
    try:
        model = open_local(paths[0])
    except GGUFError as e:
        raise HubError(f"downloaded, but the files do not form a valid model: {e.message}") from None
    return Pulled(paths[0], len(model.shards), len(model.tensors))


def local_first(st: PullState) -> Path | None:
    """The first file of a complete quant, where it is."""
    return transfer.local_path(st.listing, st.quant.first, st.dest) if st.complete else None
