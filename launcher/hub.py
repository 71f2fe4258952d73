"""Hugging Face Hub at the edge: list a repo's quants, read GGUF headers by range request, download one quant.

huggingface_hub is imported inside the functions (it is heavy). The endpoint
(HF_ENDPOINT), offline mode (HF_HUB_OFFLINE) and token (HF_TOKEN or the saved
login) are read when a call is made, not when a module is imported. Headers
and listings are cached (cache_dir()/hub) so planning stays exact offline, and
when the Hub fails (5xx, 429, no answer): the cached listing and headers are
used then, and the output says so. Header reads retry before a quant falls back
to estimates, run in daemon threads, and stop at Ctrl-C within a second.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from launcher import download as dl
from launcher.catalog import Profile
from launcher.choose import ModelSource
from launcher.errors import Changed, HubError, Offline, RunqError, Unavailable
from launcher.gguf import BytesSource, GGUFHeader, read_header
from launcher.hub_layout import RemoteFile, RemoteQuant
from launcher.paths import cache_dir, hf_cache_dir, hf_repo_dir
from launcher.sampling import from_gguf
from launcher.units import fmt_decimal

DEFAULT_ENDPOINT = "https://huggingface.co"
FIRST_SHARD_READ = 8 * 1024 * 1024  # covers the vocabulary of almost every model in one request (gguf.md)
OTHER_SHARD_READ = 256 * 1024  # later shards: only split.* keys and their tensor infos
DISK_MARGIN_BYTES = 1024**3
READ_RETRIES = 3  # a header read is tried 4 times (0.5, 1, 2 s apart) before its quant falls back to estimates
READ_BACKOFF_S = 0.5
PREFLIGHT_TRIES = 3
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_url(repo: str, path: str, revision: str) -> str:
    """The Hub's URL for a file (it redirects to the CDN). Built here from HF_ENDPOINT as it is now:
    huggingface_hub's hf_hub_url starts from the endpoint it saw when it was first imported."""
    from urllib.parse import quote

    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


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
        status = getattr(e.response, "status_code", 0) or 0
        first = str(e).splitlines()[0] if str(e) else ""
        if status == 429 or status >= 500:
            raise Unavailable(f"{endpoint()} answered {status} for {repo}: {first}") from None
        raise HubError(f"{endpoint()} answered with an error for {repo}: {first}") from None
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
    why: str = ""  # cached: why the Hub was not asked (offline, or how it failed)


def _listing_path(repo: str, revision: str) -> Path:
    return cache_dir() / "hub" / repo.replace("/", "--") / f"listing-{revision.replace('/', '--')}.json"


def list_repo(repo: str, revision: str = "main", *, network: bool = True) -> Listing:
    """Every file of the repo with its size, from the Hub, or from the last listing when offline."""
    if offline() or not network:
        why = "HF_HUB_OFFLINE is set" if network else "not asking the Hub now"
        return _cached_listing(repo, revision, why)
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        _preflight(repo, revision)
        with hub_errors(repo):
            entries = list(
                HfApi(endpoint=endpoint(), token=token()).list_repo_tree(repo, recursive=True, revision=revision)
            )
    except Unavailable as e:
        return _cached_listing(repo, revision, e.message)
    except Offline as e:
        return _cached_listing(repo, revision, f"offline: {e.message}")
    files = tuple(RemoteFile(e.path, int(e.size)) for e in entries if isinstance(e, RepoFile))
    sha = {e.path: e.lfs.sha256 for e in entries if isinstance(e, RepoFile) and e.lfs is not None}
    listing = Listing(repo, revision, files, sha)
    p = _listing_path(repo, revision)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"files": [[f.path, f.size] for f in files], "sha256": sha}))
    return listing


def _preflight(repo: str, revision: str) -> None:
    """A few quick requests: no network means offline now, and a Hub answering 5xx means "use the cache" now,
    not after 30 s of huggingface_hub's backoff."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session, logging

    logging.set_verbosity_error()  # huggingface_hub's retry chatter is not for runq's users
    url = f"{endpoint()}/api/models/{repo}/revision/{revision}"
    status = 0
    for attempt in range(PREFLIGHT_TRIES):
        try:
            r = get_session().head(url, headers=build_hf_headers(token=token()), timeout=10, follow_redirects=True)
        except (httpx2.TransportError, OSError) as e:
            raise Offline(f"cannot reach {endpoint()}: {e}") from None
        status = r.status_code
        if status != 429 and status < 500:
            return
        if attempt + 1 < PREFLIGHT_TRIES:
            time.sleep(READ_BACKOFF_S * 2**attempt)
    raise Unavailable(f"{endpoint()} answered {status} ({PREFLIGHT_TRIES} tries)")


def _cached_listing(repo: str, revision: str, why: str) -> Listing:
    try:
        data = json.loads(_listing_path(repo, revision).read_text())
    except (OSError, ValueError):
        raise Offline(f"{why}, and {repo} has not been listed before") from None
    files = tuple(RemoteFile(p, s) for p, s in data["files"])
    return Listing(repo, revision, files, data.get("sha256", {}), cached=True, why=why)


# --- remote headers ---------------------------------------------------------------------------------


class HubSource:
    """A file on the Hub as a ByteSource: each read is one HTTP range request (redirects followed)."""

    def __init__(self, repo: str, path: str, revision: str, size: int) -> None:
        self.repo, self.path, self.revision = repo, path, revision
        self.url = resolve_url(repo, path, revision)
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
        """One range read, tried again (0.5, 1, 2 s apart) when the Hub fails or the network drops."""
        for attempt in range(READ_RETRIES + 1):
            if _cancel.is_set():
                raise Offline("stopped")
            try:
                return self._read_once(offset, length)
            except Offline:
                if attempt == READ_RETRIES:
                    raise
                _cancel.wait(READ_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _read_once(self, offset: int, length: int) -> bytes:
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
                if _cancel.is_set():
                    raise Offline("stopped")
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
    if sha and (blob := hf_repo_dir(repo) / "blobs" / sha).is_file() and blob.stat().st_size == f.size:
        from launcher.gguf import read_file_header

        return read_file_header(blob)  # downloaded already: the header is on disk
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


_cancel = threading.Event()  # set when the caller was interrupted: the reader threads stop at their next step


def read_many(listing: Listing, quants: list[RemoteQuant], workers: int = 8) -> dict[str, list[GGUFHeader] | Exception]:
    """Headers of several quants in parallel; a failure is returned per quant, not raised.

    Daemon threads, not a ThreadPoolExecutor (whose threads the interpreter joins at exit): at Ctrl-C the
    caller returns at once, the readers stop at their next read, and a stalled request cannot hold runq."""
    results: dict[str, list[GGUFHeader] | Exception] = {}
    todo = list(quants)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not todo or _cancel.is_set():
                    return
                q = todo.pop(0)
            try:
                got: list[GGUFHeader] | Exception = read_quant_headers(listing, q)
            except RunqError as e:
                got = e
            with lock:
                results[q.name] = got

    _cancel.clear()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, len(quants)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    except KeyboardInterrupt:
        _cancel.set()
        raise
    return {q.name: results[q.name] for q in quants}


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
    from launcher.hardware import free_disk_bytes

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
        if m := _SPLIT_RE.search(f.path):
            have[int(m.group(1))] = f.path
            total = max(total, int(m.group(2)))
    if not have:
        return []
    some = next(iter(have.values()))
    return [_SPLIT_RE.sub(f"-{k:05d}-of-{total:05d}.gguf", some) for k in range(1, total + 1) if k not in have]


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
        loud = (f"the Hub could not be used ({e.message}): sizes are ESTIMATED from published figures",)
        return ExactSources({}, f"estimated: {e.message}", loud if network and not offline() else (), None, {})
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
    where = f"the GGUF headers on {endpoint()}"
    if listing.cached:
        where = "cached headers (offline)" if offline() else f"cached headers ({listing.why})"
    status = f"exact: {len(sources)} of {len(remote)} quants from {where}"
    if listing.cached and network and not offline():
        warnings.append(f"the Hub could not be used ({listing.why}): planning from the listing cached earlier")
    if failed:
        status += f"; estimated for the rest ({failed[0]}{' …' if len(failed) > 1 else ''})"
        if network:
            warnings.append(
                f"the GGUF headers of {len(failed)} quant(s) could not be read from the Hub ({failed[0]}): their "
                f"sizes are ESTIMATED, the plan may be off; run the command again when the Hub answers"
            )
    paths = {(m.spec.name if m.spec else m.remote.name): m.remote.first.path for m in matches if m.remote is not None}
    return ExactSources(sources, status, tuple(warnings), tuple(paths), paths)
