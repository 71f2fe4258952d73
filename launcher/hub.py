"""Hugging Face Hub at the edge: list a repo's quants, read GGUF headers by range request, download one quant.

huggingface_hub is imported inside the functions (it is heavy). The endpoint
(HF_ENDPOINT), offline mode (HF_HUB_OFFLINE) and token (HF_TOKEN or the saved
login) are read when a call is made, not when a module is imported. Headers
and listings are cached (cache_dir()/hub) so planning stays exact offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from launcher import download as dl
from launcher.catalog import Profile
from launcher.choose import ModelSource
from launcher.errors import HubError, Offline, RunqError
from launcher.gguf import BytesSource, GGUFHeader, read_header
from launcher.hub_layout import RemoteFile, RemoteQuant
from launcher.paths import cache_dir, hf_cache_dir, hf_repo_dir
from launcher.sampling import from_gguf
from launcher.units import fmt_decimal

DEFAULT_ENDPOINT = "https://huggingface.co"
FIRST_SHARD_READ = 8 * 1024 * 1024  # covers the vocabulary of almost every model in one request (gguf.md)
OTHER_SHARD_READ = 256 * 1024  # later shards: only split.* keys and their tensor infos
DISK_MARGIN_BYTES = 1024**3


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def token() -> str | None:
    if t := os.environ.get("HF_TOKEN"):
        return t
    from huggingface_hub import get_token

    return get_token()


@contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as clear runq errors."""
    import httpx2
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError:
        raise HubError(
            f"{repo} is gated: it needs you to accept its license and a token",
            hint=f"accept it at {endpoint()}/{repo}, then set HF_TOKEN (or run `hf auth login`)",
        ) from None
    except hf.RepositoryNotFoundError:
        raise HubError(
            f"{repo} was not found on {endpoint()}",
            hint="check the name; a private repo needs HF_TOKEN",
        ) from None
    except hf.RevisionNotFoundError:
        raise HubError(f"{repo} has no such revision") from None
    except hf.RemoteEntryNotFoundError as e:
        raise HubError(f"{repo}: a file is missing on the Hub: {e}") from None
    except hf.OfflineModeIsEnabled:
        raise Offline("HF_HUB_OFFLINE is set") from None
    except hf.HfHubHTTPError as e:
        raise HubError(f"{endpoint()} answered with an error for {repo}: {e}") from None
    except (httpx2.TransportError, ConnectionError, TimeoutError) as e:
        raise Offline(f"cannot reach {endpoint()}: {e}") from None


# --- listing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: str
    files: tuple[RemoteFile, ...]
    sha256: dict[str, str]  # path -> LFS sha256 (the blob's identity), when the Hub gives it
    cached: bool = False


def _listing_path(repo: str, revision: str) -> Path:
    return cache_dir() / "hub" / repo.replace("/", "--") / f"listing-{revision.replace('/', '--')}.json"


def list_repo(repo: str, revision: str = "main", *, network: bool = True) -> Listing:
    """Every file of the repo with its size, from the Hub, or from the last listing when offline."""
    if offline() or not network:
        return _cached_listing(repo, revision, "HF_HUB_OFFLINE is set" if network else "not asking the Hub now")
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        _preflight(repo, revision)
        with hub_errors(repo):
            entries = list(
                HfApi(endpoint=endpoint(), token=token()).list_repo_tree(repo, recursive=True, revision=revision)
            )
    except Offline as e:
        return _cached_listing(repo, revision, e.message)
    files = tuple(RemoteFile(e.path, int(e.size)) for e in entries if isinstance(e, RepoFile))
    sha = {e.path: e.lfs.sha256 for e in entries if isinstance(e, RepoFile) and e.lfs is not None}
    listing = Listing(repo, revision, files, sha)
    p = _listing_path(repo, revision)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"files": [[f.path, f.size] for f in files], "sha256": sha}))
    return listing


def _preflight(repo: str, revision: str) -> None:
    """One quick request without retries: no network means offline now, not after 30 s of backoff."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session, logging

    logging.set_verbosity_error()  # huggingface_hub's retry chatter is not for runq's users
    url = f"{endpoint()}/api/models/{repo}/revision/{revision}"
    try:
        get_session().head(url, headers=build_hf_headers(token=token()), timeout=10, follow_redirects=True)
    except (httpx2.TransportError, OSError) as e:
        raise Offline(f"cannot reach {endpoint()}: {e}") from None


def _cached_listing(repo: str, revision: str, why: str) -> Listing:
    try:
        data = json.loads(_listing_path(repo, revision).read_text())
    except (OSError, ValueError):
        raise Offline(f"{why}, and {repo} has not been listed before") from None
    files = tuple(RemoteFile(p, s) for p, s in data["files"])
    return Listing(repo, revision, files, data.get("sha256", {}), cached=True)


# --- remote headers ---------------------------------------------------------------------------------


class HubSource:
    """A file on the Hub as a ByteSource: each read is one HTTP range request (redirects followed)."""

    def __init__(self, repo: str, path: str, revision: str, size: int) -> None:
        from huggingface_hub import hf_hub_url

        self.repo, self.path, self.revision = repo, path, revision
        self.url = hf_hub_url(repo, path, revision=revision, endpoint=endpoint())
        self._size = size
        self.fetched = bytearray()  # every byte read, contiguous from 0 (the reader asks in order)
        self.requests = 0

    @property
    def name(self) -> str:
        return f"{self.repo}/{self.path}"

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        headers = build_hf_headers(token=token())
        headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        self.requests += 1
        with (
            hub_errors(self.repo),
            get_session().stream("GET", self.url, headers=headers, follow_redirects=True, timeout=60) as r,
        ):
            if r.status_code >= 400:
                r.read()  # the error details are in the body
                hf_raise_for_status(r)
            data = bytearray()
            skip = offset if r.status_code == 200 else 0  # a server that ignores Range: skip, stop early
            for raw in r.iter_bytes():
                chunk = raw
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                data += chunk
                if len(data) >= length:
                    break
        data = data[:length]
        if offset == len(self.fetched):
            self.fetched += data
        return bytes(data)


def _header_cache_path(repo: str, path: str, sha: str | None, size: int) -> Path:
    ident = (sha or f"size{size}")[:16]
    return cache_dir() / "hub" / repo.replace("/", "--") / "headers" / f"{path.replace('/', '--')}.{ident}.hdr"


def read_remote_header(
    repo: str, revision: str, f: RemoteFile, sha: str | None, *, first: bool, network: bool = True
) -> GGUFHeader:
    """A shard's GGUF header: from the header cache, else by range requests (then cached)."""
    cached = _header_cache_path(repo, f.path, sha, f.size)
    name = f"{repo}/{f.path}"
    if cached.is_file():
        return read_header(BytesSource(cached.read_bytes(), name, size=f.size))
    if offline() or not network:
        raise Offline(f"the header of {name} is not cached")
    src = HubSource(repo, f.path, revision, f.size)
    header = read_header(src, first_read=FIRST_SHARD_READ if first else OTHER_SHARD_READ)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(bytes(src.fetched[: header.data_offset]))
    tmp.replace(cached)
    return header


def read_quant_headers(listing: Listing, quant: RemoteQuant) -> list[GGUFHeader]:
    return [
        read_remote_header(
            listing.repo, listing.revision, f, listing.sha256.get(f.path), first=i == 0, network=not listing.cached
        )
        for i, f in enumerate(quant.files)
    ]


def read_many(listing: Listing, quants: list[RemoteQuant], workers: int = 8) -> dict[str, list[GGUFHeader] | Exception]:
    """Headers of several quants in parallel; a failure is returned per quant, not raised."""

    def one(q: RemoteQuant) -> list[GGUFHeader] | Exception:
        try:
            return read_quant_headers(listing, q)
        except RunqError as e:
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip([q.name for q in quants], pool.map(one, quants), strict=True))


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
    snap = snapshot_path(listing.repo, f.path, listing.revision)
    if snap is not None:
        return snap
    sha = listing.sha256.get(f.path)
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
        local = local_path(listing, f, dest)
        if local is not None and local.stat().st_size == f.size:
            done.append(f.path)
            continue
        sha = listing.sha256.get(f.path, "")
        part = dl.partial_size(dl.target_for(listing.repo, f.path, sha, "", dest)) if (sha or dest) else 0
        part = part if part <= f.size else 0
        kept += part
        missing += f.size - part
    return PullPlan(quant.files, tuple(done), missing, kept)


def check_disk(plan: PullPlan, dest: Path | None, free_bytes: int | None = None) -> None:
    from launcher.hardware import free_disk_bytes

    where = dest or hf_cache_dir()
    free = free_bytes if free_bytes is not None else free_disk_bytes(where)
    if free is not None and free < plan.missing_bytes + DISK_MARGIN_BYTES:
        raise HubError(
            f"not enough disk space in {where}: {fmt_decimal(plan.missing_bytes)} still to download "
            f"(+1 GB margin), {fmt_decimal(free)} free",
            hint="free some space, or download elsewhere with --dir DIR (or HF_HUB_CACHE=DIR)",
        )


def download(
    listing: Listing,
    quant: RemoteQuant,
    dest: Path | None,
    on_file: Callable[[RemoteFile], None],
    progress: dl.Progress,
) -> list[Path]:
    """Download every file of one quant, continuing interrupted ones; returns the local paths."""
    if offline():
        raise Offline("HF_HUB_OFFLINE is set: cannot download")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    paths = []
    for f in quant.files:
        on_file(f)
        url = hf_hub_url(listing.repo, f.path, revision=listing.revision, endpoint=endpoint())
        with hub_errors(listing.repo):
            meta = get_hf_file_metadata(url, token=token(), endpoint=endpoint())
        sha = listing.sha256.get(f.path) or meta.etag or ""
        commit = meta.commit_hash or listing.revision
        target = dl.target_for(listing.repo, f.path, sha, commit, dest)
        headers = build_hf_headers(token=token())
        with hub_errors(listing.repo):
            paths.append(
                dl.fetch(
                    meta.location or url,
                    target,
                    size=f.size,
                    sha256=listing.sha256.get(f.path),
                    headers=headers,
                    progress=progress,
                    revision=listing.revision,
                    commit=commit,
                    repo=listing.repo,
                )
            )
    return paths


# --- exact planning inputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExactSources:
    sources: dict[str, ModelSource]  # quant name -> exact tensors
    status: str  # "exact: …" / "cached: …" / "estimated: …" — said to the user
    warnings: tuple[str, ...]
    available: tuple[str, ...] | None  # quants the repo has (None: the repo could not be listed)
    first_paths: dict[str, str]  # quant name -> repo path of its (first) file


def exact_sources(profile: Profile, revision: str = "main", *, network: bool = True) -> ExactSources:
    """Real tensor lists for a profile's quants: from the Hub's headers (cached after), else from the cache.
    network=False uses only what is cached (the TUI's first screen must not wait on the network)."""
    from launcher.hub_layout import group_quants, match_profile, missing_warning
    from launcher.model import combine

    try:
        listing = list_repo(profile.repo, revision, network=network)
    except Offline as e:
        return ExactSources({}, f"estimated: {e.message}", (), None, {})
    quants = group_quants(listing.files)
    matches = match_profile(profile, quants)
    warnings = [m.warning for m in matches if m.warning]
    if missing := missing_warning(profile, matches):
        warnings.append(missing)
    remote = [m.remote for m in matches if m.remote is not None]
    results = read_many(listing, remote)
    sources: dict[str, ModelSource] = {}
    failed = []
    for m in matches:
        if m.remote is None:
            continue
        got = results[m.remote.name]
        name = m.spec.name if m.spec else m.remote.name
        if isinstance(got, Exception):
            failed.append(f"{name}: {got}")
            continue
        model = combine(got)
        sources[name] = ModelSource(
            name, model.tensors, model.hparams, True, m.remote.size_bytes, sampling=from_gguf(model.metadata)
        )
    where = "cached headers (offline)" if listing.cached else f"the GGUF headers on {endpoint()}"
    status = f"exact: {len(sources)} of {len(remote)} quants from {where}"
    if failed:
        status += f"; estimated for the rest ({failed[0]}{' …' if len(failed) > 1 else ''})"
    paths = {(m.spec.name if m.spec else m.remote.name): m.remote.first.path for m in matches if m.remote is not None}
    return ExactSources(sources, status, tuple(warnings), tuple(paths), paths)
