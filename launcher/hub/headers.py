"""GGUF headers of Hub files read by HTTP range requests, cached, and the exact planning sources they give.

Edge (network, cache). Header reads retry before a quant falls back to estimates, run in daemon threads, and stop at
Ctrl-C within a second. The header cache path is spelled here only (`header_cache_path`).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from launcher.catalog.chat_templates import chat_format
from launcher.catalog.profiles import Profile
from launcher.catalog.sampling import from_gguf
from launcher.catalog.sources import ModelSource
from launcher.errors import Offline, RunqError
from launcher.hub.client import (
    ON_DISK,
    READ_BACKOFF_S,
    READ_RETRIES,
    Listing,
    endpoint,
    hub_errors,
    list_repo,
    offline,
    resolve_url,
    snapshot_dir,
    token,
)
from launcher.hub.layout import RemoteFile, RemoteQuant
from launcher.model.gguf import BytesSource, GGUFHeader, read_header
from launcher.paths import hf_repo_dir, runq_hub_dir

FIRST_SHARD_READ = 8 * 1024 * 1024  # covers the vocabulary of almost every model in one request (gguf.md)
OTHER_SHARD_READ = 256 * 1024  # later shards: only split.* keys and their tensor infos
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


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


def header_cache_path(repo: str, path: str, sha: str | None, size: int) -> Path:
    ident = (sha or f"size{size}")[:16]
    return runq_hub_dir(repo) / "headers" / f"{path.replace('/', '--')}.{ident}.hdr"


def read_remote_header(
    repo: str, revision: str, f: RemoteFile, sha: str | None, *, first: bool, network: bool = True
) -> GGUFHeader:
    """A shard's GGUF header: from the header cache, else by range requests (then cached)."""
    cached = header_cache_path(repo, f.path, sha, f.size)
    name = f"{repo}/{f.path}"
    if cached.is_file():
        return read_header(BytesSource(cached.read_bytes(), name, size=f.size))
    if sha and (blob := hf_repo_dir(repo) / "blobs" / sha).is_file() and blob.stat().st_size == f.size:
        from launcher.model.gguf import read_file_header

        return read_file_header(blob)  # downloaded already: the header is on disk
    snap = snapshot_dir(repo, revision)
    if snap is not None and (snap / f.path).is_file() and (snap / f.path).stat().st_size == f.size:
        from launcher.model.gguf import read_file_header

        return read_file_header(snap / f.path)  # downloaded (by runq or another tool), the listing may not know
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
    from launcher.hub.layout import group_quants, match_profile, missing_warning
    from launcher.model.shards import combine

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
            name, model.tensors, model.hparams, True, m.remote.size_bytes, sampling=from_gguf(model.metadata),
            chat=chat_format(model.metadata),
        )  # fmt: skip
    where = f"the GGUF headers on {endpoint()}"
    if listing.cached:
        where = "cached headers (offline)" if offline() else f"cached headers ({listing.why})"
        if listing.why.endswith(ON_DISK):
            where = f"the files on disk ({listing.why.removesuffix(ON_DISK).rstrip('; ')})"
    status = f"exact: {len(sources)} of {len(remote)} quants from {where}"
    if listing.cached and network and not offline():
        why = listing.why.removesuffix(f"; {ON_DISK}")
        earlier = "the files on disk" if why != listing.why else "the listing cached earlier"
        warnings.append(f"the Hub could not be used ({why}): planning from {earlier}")
    if failed:
        status += f"; estimated for the rest ({failed[0]}{' …' if len(failed) > 1 else ''})"
        if network:
            warnings.append(
                f"the GGUF headers of {len(failed)} quant(s) could not be read from the Hub ({failed[0]}): their "
                f"sizes are ESTIMATED, the plan may be off; run the command again when the Hub answers"
            )
    paths = {(m.spec.name if m.spec else m.remote.name): m.remote.first.path for m in matches if m.remote is not None}
    return ExactSources(sources, status, tuple(warnings), tuple(paths), paths)
