"""Resumable, verified downloads of big files from the Hub into the Hugging Face cache layout (or a directory).

Why not hf_hub_download: since huggingface_hub PR #4228 each process downloads
into a uniquely named temporary file that is deleted when the download fails,
so a 50 GB shard interrupted at 49 GB starts again from zero on the next run.
Here the partial file keeps a fixed name next to its destination and the next
run continues it with an HTTP Range request; the LFS sha256 is checked (hashing
the kept part first) before the file is moved into place. The cache layout is
huggingface_hub's (blobs/<sha256>, snapshots/<commit>/<path>, refs/<revision>),
so other tools share what runq downloads. Nothing complete is ever deleted.

One writer per file: the partial is only touched under the lock file huggingface_hub uses for the same file
(`<cache>/.locks/models--org--name/<sha256>.lock`, or `DIR/.cache/huggingface/download/<path>.lock` with
--dir), so two runq processes, or runq and another tool, never write one file together. Every request goes
through the Hub's resolve URL (pinned to a commit), so an expired signed CDN URL is replaced on the next try,
and a changed file (a new sha256 in the Hub's answer) stops the download at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import Changed, DownloadError
from launcher.paths import hf_cache_dir, hf_repo_dir

CHUNK = 1 << 20
RETRIES = 5  # failed tries in a row (any progress resets the count)
BACKOFF_S = 1.0  # waits 1, 2, 4, 8, 16 s between tries
LOCK_NOTICE_S = 1.0  # say that we wait for another download after this long
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int], None]  # (bytes done, total)
Notice = Callable[[str], None]


@dataclass(frozen=True)
class Destination:
    final: Path  # where the finished file lives (a blob, or dest/path)
    partial: Path  # the kept partial download
    link: Path | None  # the snapshot path that points at the blob (cache layout only)
    name: str = ""  # the file's path in the repo: what messages call it (never the blob's sha)
    lock: Path | None = None  # huggingface_hub's lock file for this file
    meta: Path | None = None  # --dir: huggingface_hub's metadata file (commit, etag, time) of the finished file

    @property
    def label(self) -> str:
        return self.name or self.final.name


def target_for(repo: str, path: str, sha256: str, commit: str, dest: Path | None) -> Destination:
    if dest is not None:
        final = dest / path
        meta = dest / ".cache" / "huggingface" / "download" / (path + ".metadata")
        partial = final.with_name(final.name + ".runq-partial")
        return Destination(final, partial, None, path, meta.with_suffix(".lock"), meta)
    root = hf_repo_dir(repo)
    blob = root / "blobs" / sha256
    lock = hf_cache_dir() / ".locks" / root.name / f"{sha256}.lock" if sha256 else None
    return Destination(blob, blob.with_name(sha256 + ".incomplete"), root / "snapshots" / commit / path, path, lock)


def partial_size(t: Destination) -> int:
    return t.partial.stat().st_size if t.partial.is_file() else 0


def recorded_sha(t: Destination) -> str | None:
    """--dir: the sha256 the finished file was downloaded as (huggingface_hub's metadata file), if recorded."""
    if t.meta is None:
        return None
    try:
        lines = t.meta.read_text().splitlines()
    except OSError:
        return None
    return lines[1].strip().strip('"') if len(lines) > 1 else None


def is_complete(t: Destination, size: int, sha256: str | None) -> bool:
    """The finished file is there, the Hub's size, and (where it can be known without hashing) the Hub's sha256."""
    if not (t.final.is_file() and t.final.stat().st_size == size):
        return False
    if t.meta is None or not sha256:
        return True  # a blob is named by its sha256
    have = recorded_sha(t)
    return have is None or have == sha256  # a file from before runq kept metadata: trusted by its size


@contextlib.contextmanager
def locked(t: Destination, notice: Notice | None, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold huggingface_hub's lock for this file (waiting, and saying so, while another download holds it).
    `waiting` is called every second meanwhile (the TUI's cancel raises from it)."""
    if t.lock is None:
        yield
        return
    from filelock import FileLock, Timeout

    t.lock.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(t.lock), mode=0o664)
    said = False
    while True:
        try:
            lock.acquire(timeout=LOCK_NOTICE_S)
            break
        except Timeout:
            if notice and not said:
                notice(f"Waiting: another download of {t.label} is running (lock {t.lock})")
                said = True
            waiting()
    try:
        yield
    finally:
        lock.release()


def _link(t: Destination, revision: str, commit: str, repo: str) -> None:
    if t.link is None:
        return
    t.link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(t.final, t.link.parent)
    if not (t.link.is_symlink() and str(t.link.readlink()) == rel):  # replaced atomically: readers never miss it
        tmp = t.link.with_name(f".{t.link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(rel)
        tmp.replace(t.link)
    if revision != commit:
        refs = hf_repo_dir(repo) / "refs" / revision
        refs.parent.mkdir(parents=True, exist_ok=True)
        tmp = refs.with_name(f".{refs.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        tmp.replace(refs)


def fetch(
    url: str,
    t: Destination,
    *,
    size: int,
    sha256: str | None,
    headers: dict[str, str],
    progress: Progress,
    revision: str,
    commit: str,
    repo: str,
    notice: Notice | None = None,
) -> Path:
    """Download url into t.final, continuing t.partial if it is there; verify size and sha256.

    url is the Hub's resolve URL (each try follows its redirect afresh). Under the file's lock."""
    with locked(t, notice, lambda: progress(partial_size(t), size)):
        if not is_complete(t, size, sha256):
            _download(url, t, size=size, sha256=sha256, headers=headers, progress=progress)
            if t.meta is not None:
                t.meta.parent.mkdir(parents=True, exist_ok=True)
                t.meta.write_text(f"{commit}\n{sha256 or ''}\n{time.time()}\n")  # huggingface_hub's format
        for stale in (t.partial.with_name(t.partial.name + ".corrupt"),):
            stale.unlink(missing_ok=True)  # a bad copy kept for inspection is of no use once the file is good
        _link(t, revision, commit, repo)
    return t.link or t.final


def _download(
    url: str, t: Destination, *, size: int, sha256: str | None, headers: dict[str, str], progress: Progress
) -> None:
    t.partial.parent.mkdir(parents=True, exist_ok=True)
    if partial_size(t) > size:  # not ours, or from another version of the file: start over
        t.partial.unlink()
    digest = _Digest(t.partial)
    done = digest.count
    progress(done, size)
    failures = 0
    while done < size:
        try:
            got = _stream(url, t.partial, done, size, headers, digest, progress, sha256)
            if got == done:
                raise DownloadError(f"the Hub sent no bytes (an empty answer) at byte {done:,} of {size:,}")
            done, failures = got, 0
        except Changed as e:
            raise Changed(
                f"{t.label} changed on the Hub during the download ({e.message})",
                hint="run the command again: it lists the repo afresh and downloads the new version",
            ) from None
        except (OSError, DownloadError) as e:
            if isinstance(e, OSError) and e.errno == 28:  # ENOSPC
                raise DownloadError(
                    f"the disk filled up while downloading {t.label}",
                    hint="free some space and run the command again: the part already downloaded is kept",
                ) from None
            if not _retryable(e):
                raise
            failures += 1
            if failures > RETRIES:
                raise DownloadError(
                    f"the download of {t.label} keeps failing ({_short(e)})",
                    hint=f"run the command again later: the {partial_size(t) / 1e9:.2f} GB already downloaded are kept",
                ) from None
            time.sleep(min(BACKOFF_S * 2 ** (failures - 1), 30))
            done = partial_size(t)
            if done != digest.count:  # the hash must cover exactly the bytes on disk
                digest = _Digest(t.partial)
    if done != size:
        raise DownloadError(f"{t.label}: got {done:,} bytes, expected {size:,}")
    if sha256 and digest.hexdigest() != sha256:
        bad = t.partial.with_name(t.partial.name + ".corrupt")
        t.partial.rename(bad)  # kept for inspection, never used; removed once the file is downloaded right
        raise DownloadError(
            f"{t.label}: the downloaded bytes do not match the Hub's sha256",
            hint=f"run the command again to download it afresh (the bad copy is kept as {bad})",
        )
    t.partial.replace(t.final)


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _retryable(e: BaseException) -> bool:
    """Network trouble, a busy Hub (429, 5xx), or a signed CDN URL that expired (403/410: the next try resolves
    the URL again). Not: a missing file or repo, a token the Hub refuses (401, 404)."""
    status = _status(e)
    return status is None or status in (403, 408, 410, 429) or status >= 500


def _short(e: BaseException) -> str:
    status = _status(e)
    if status is not None:
        return f"HTTP {status}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class _Digest:
    """sha256 of a growing file, and how many bytes it has seen (hashing what a previous run kept first)."""

    def __init__(self, path: Path) -> None:
        self._h = hashlib.sha256()
        self.count = 0
        if path.is_file():
            with path.open("rb") as f:
                while block := f.read(CHUNK * 16):
                    self.update(block)

    def update(self, data: bytes) -> None:
        self._h.update(data)
        self.count += len(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def linked_sha(response: object) -> str | None:
    """The sha256 the Hub says the file has, from X-Linked-Etag on the resolve answer (before its redirect)."""
    for r in [*getattr(response, "history", []), response]:
        tag = getattr(r, "headers", {}).get("x-linked-etag")
        if tag:
            value = tag.strip().removeprefix("W/").strip('"')
            return value if _SHA_RE.match(value) else None
    return None


def _stream(
    url: str,
    partial: Path,
    done: int,
    size: int,
    headers: dict[str, str],
    digest: _Digest,
    progress: Progress,
    sha256: str | None,
) -> int:
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    h = dict(headers)
    if done:
        h["Range"] = f"bytes={done}-"
    try:
        with get_session().stream("GET", url, headers=h, follow_redirects=True, timeout=60) as r:
            now = linked_sha(r)
            if sha256 and now and now != sha256:
                raise Changed(f"its sha256 is now {now[:12]}…, was {sha256[:12]}…")
            if r.status_code >= 400:
                r.read()
                hf_raise_for_status(r)
            if done and r.status_code != 206:  # the server ignored Range: only a fresh start is safe
                if r.headers.get("content-length") == "0":
                    return done  # an empty answer, not a full one: keep the part (the caller retries)
                partial.unlink(missing_ok=True)
                raise DownloadError("the server does not support resuming; starting over")
            with partial.open("ab") as f:
                for chunk in r.iter_bytes(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress(done, size)
    except (httpx2.TransportError, httpx2.StreamError) as e:
        raise DownloadError(str(e)) from None
    return done


def stale_files(repo: str, wanted: set[str], min_age_s: float = 60.0) -> list[Path]:
    """Leftovers in a repo's cache folder that nothing can use: `<sha256>.incomplete` parts of files the repo
    no longer has (runq only continues a part whose sha256 the listing names), and `.corrupt` copies of them.
    A part of a file the repo still has is never listed, nor one that is locked or was written in the last
    minute (another tool may be writing it); huggingface_hub's own per-process temporary files are not ours."""
    blobs = hf_repo_dir(repo) / "blobs"
    if not blobs.is_dir():
        return []
    out = []
    now = time.time()
    for p in blobs.iterdir():
        sha = p.name.removesuffix(".corrupt").removesuffix(".incomplete")
        if not _SHA_RE.match(sha) or p.name == sha or sha in wanted:
            continue
        if p.name.endswith(".corrupt"):
            out.append(p)
            continue
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime >= min_age_s and not _locked_now(target_for(repo, "", sha, "", None)):
                out.append(p)
    return sorted(out)


def _locked_now(t: Destination) -> bool:
    from filelock import FileLock, Timeout

    if t.lock is None or not t.lock.exists():
        return False
    lock = FileLock(str(t.lock), mode=0o664)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
