"""One quant's files from the Hub to disk: what is there already, the disk check, the download, missing shards.

Edge (network, disk). Never deletes a user's partial download.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import Changed, HubError, Offline
from launcher.hub import download as dl
from launcher.hub.client import Listing, endpoint, hub_errors, offline, resolve_url, snapshot_dir, token
from launcher.hub.headers import SPLIT_RE
from launcher.hub.layout import RemoteFile, RemoteQuant
from launcher.paths import hf_cache_dir, hf_repo_dir
from launcher.units import fmt_decimal

DISK_MARGIN_BYTES = 1024**3


# --- downloads --------------------------------------------------------------------------------------


def snapshot_path(repo: str, path: str, revision: str = "main") -> Path | None:
    """The file in the Hugging Face cache, if it is there completely."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, path, cache_dir=str(hf_cache_dir()), revision=revision)
    return Path(found) if isinstance(found, str) else None


def local_path(listing: Listing, f: RemoteFile, dest: Path | None) -> Path | None:
    """Where the finished file is, if it is there: dest/path, or the cache's snapshot (or blob) for it."""
    if dest is not None:
        p = dest / f.path
        return p if p.is_file() else None
    sha = listing.sha256.get(f.path)
    snap = snapshot_path(listing.repo, f.path, listing.revision)
    if snap is None and not sha and (d := snapshot_dir(listing.repo, listing.revision)) is not None:
        on_disk = d / f.path  # a snapshot without refs/REVISION: as another tool may leave it
        snap = on_disk if on_disk.is_file() and on_disk.stat().st_size == f.size else None
    if snap is not None and (not sha or snap.resolve().name == sha):  # not an older version of the same size
        return snap
    blob = hf_repo_dir(listing.repo) / "blobs" / sha if sha else None
    return blob if blob is not None and blob.is_file() else None


@dataclass(frozen=True)
class PullPlan:
    files: tuple[RemoteFile, ...]
    complete: tuple[str, ...]  # paths already downloaded whole
    missing_bytes: int
    partial_bytes: int  # kept from interrupted downloads, to be continued


def plan_pull(listing: Listing, quant: RemoteQuant, dest: Path | None) -> PullPlan:
    done: list[str] = []
    missing = kept = 0
    for f in quant.files:
        sha = listing.sha256.get(f.path, "")
        local = local_path(listing, f, dest)
        current = dest is None or dl.is_complete(dl.target_for(listing.repo, f.path, sha, "", dest), f.size, sha)
        if local is not None and local.stat().st_size == f.size and current:
            done.append(f.path)
            continue
        part = dl.partial_size(dl.target_for(listing.repo, f.path, sha, "", dest)) if (sha or dest) else 0
        part = part if part <= f.size else 0
        kept += part
        missing += f.size - part
    return PullPlan(quant.files, tuple(done), missing, kept)


def check_disk(plan: PullPlan, dest: Path | None, free_bytes: int | None = None) -> None:
    from launcher.machine.probe import free_disk_bytes

    where = dest or hf_cache_dir()
    free = free_bytes if free_bytes is not None else free_disk_bytes(where)
    if free is not None and free < plan.missing_bytes + DISK_MARGIN_BYTES:
        raise HubError(
            f"not enough disk space in {where}: {fmt_decimal(plan.missing_bytes)} still to download "
            f"(+1 GB margin), {fmt_decimal(free)} free",
            hint="free some space, or download elsewhere with --dir DIR (or HF_HUB_CACHE=DIR)",
        )


def missing_shards(quant: RemoteQuant) -> list[str]:
    """The shards a split set names (`-0000k-of-0000N`) that the listing does not have."""
    have: dict[int, str] = {}
    total = 0
    for f in quant.files:
        if m := SPLIT_RE.search(f.path):
            have[int(m.group(1))] = f.path
            total = max(total, int(m.group(2)))
    if not have:
        return []
    some = next(iter(have.values()))
    return [SPLIT_RE.sub(f"-{k:05d}-of-{total:05d}.gguf", some) for k in range(1, total + 1) if k not in have]


def _metadata(listing: Listing, f: RemoteFile) -> object:
    """The Hub's answer for one file (commit, sha), retried on 5xx/429; a missing file is named."""
    from huggingface_hub import get_hf_file_metadata

    url = resolve_url(listing.repo, f.path, listing.revision)
    try:
        with hub_errors(listing.repo):
            return get_hf_file_metadata(url, token=token(), endpoint=endpoint(), retry_on_errors=True)
    except Offline as e:
        raise type(e)(f"{f.path}: {e.message}", e.hint) from None
    except HubError as e:
        if "a file is missing on the Hub" in e.message:
            raise HubError(
                f"{f.path} is not in {listing.repo} any more (listed, but the Hub has no such file)",
                hint="run the command again: it lists the repo afresh",
            ) from None
        raise HubError(f"{f.path}: {e.message}", e.hint) from None


def download(
    listing: Listing,
    quant: RemoteQuant,
    dest: Path | None,
    on_file: Callable[[RemoteFile], None],
    progress: dl.Progress,
    notice: dl.Notice | None = None,
) -> list[Path]:
    """Download every file of one quant, continuing interrupted ones; returns the local paths.

    The whole set is checked first (every shard listed, each one's metadata from the Hub, its sha256 the one
    the listing named), so a missing or changed shard stops the pull before a byte is downloaded."""
    if offline():
        raise Offline("HF_HUB_OFFLINE is set: cannot download")
    from huggingface_hub.utils import build_hf_headers

    if gone := missing_shards(quant):
        raise HubError(
            f"{quant.name} is incomplete in {listing.repo}: {', '.join(gone)} not there",
            hint="nothing was downloaded; pick another quant (--quant), or try again when the repo is complete",
        )
    metas = {f.path: _metadata(listing, f) for f in quant.files}
    for f in quant.files:
        listed, now = listing.sha256.get(f.path), _etag(metas[f.path])
        if listed and now and listed != now:
            raise Changed(
                f"{f.path} changed on the Hub since the repo was listed (sha256 {now[:12]}…, listed {listed[:12]}…)",
                hint="run the command again: it lists the repo afresh",
            )
    if not listing.cached:
        for stale in dl.stale_files(listing.repo, set(listing.sha256.values())):
            stale.unlink(missing_ok=True)
    paths = []
    headers = build_hf_headers(token=token())
    for f in quant.files:
        on_file(f)
        meta = metas[f.path]
        sha = listing.sha256.get(f.path) or _etag(meta) or str(getattr(meta, "etag", None) or "").strip('"')
        commit = getattr(meta, "commit_hash", None) or listing.revision
        target = dl.target_for(listing.repo, f.path, sha, commit, dest)
        url = resolve_url(listing.repo, f.path, commit)  # followed afresh on each try
        with hub_errors(listing.repo):
            paths.append(
                dl.fetch(
                    url,
                    target,
                    size=f.size,
                    sha256=listing.sha256.get(f.path),
                    headers=headers,
                    progress=progress,
                    revision=listing.revision,
                    commit=commit,
                    repo=listing.repo,
                    notice=notice,
                )
            )
    return paths


def _etag(meta: object) -> str | None:
    tag = getattr(meta, "etag", None)
    return tag.strip('"') if isinstance(tag, str) and re.fullmatch(r'"?[0-9a-f]{64}"?', tag) else None
