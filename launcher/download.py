"""Resumable, verified downloads of big files from the Hub into the Hugging Face cache layout (or a directory).

Why not hf_hub_download: since huggingface_hub PR #4228 each process downloads
into a uniquely named temporary file that is deleted when the download fails,
so a 50 GB shard interrupted at 49 GB starts again from zero on the next run.
Here the partial file keeps a fixed name next to its destination and the next
run continues it with an HTTP Range request; the LFS sha256 is checked (hashing
the kept part first) before the file is moved into place. The cache layout is
huggingface_hub's (blobs/<sha256>, snapshots/<commit>/<path>, refs/<revision>),
so other tools share what runq downloads. Nothing complete is ever deleted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import DownloadError
from launcher.paths import hf_repo_dir

CHUNK = 1 << 20
RETRIES = 5

Progress = Callable[[int, int], None]  # (bytes done, total)


@dataclass(frozen=True)
class Destination:
    final: Path  # where the finished file lives (a blob, or dest/path)
    partial: Path  # the kept partial download
    link: Path | None  # the snapshot path that points at the blob (cache layout only)


def target_for(repo: str, path: str, sha256: str, commit: str, dest: Path | None) -> Destination:
    if dest is not None:
        final = dest / path
        return Destination(final, final.with_name(final.name + ".runq-partial"), None)
    root = hf_repo_dir(repo)
    blob = root / "blobs" / sha256
    return Destination(blob, blob.with_name(sha256 + ".incomplete"), root / "snapshots" / commit / path)


def partial_size(t: Destination) -> int:
    return t.partial.stat().st_size if t.partial.is_file() else 0


def _link(t: Destination, revision: str, commit: str, repo: str) -> None:
    if t.link is None:
        return
    t.link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(t.final, t.link.parent)
    if t.link.is_symlink() or t.link.exists():
        t.link.unlink()
    t.link.symlink_to(rel)
    if revision != commit:
        refs = hf_repo_dir(repo) / "refs" / revision
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)


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
) -> Path:
    """Download url into t.final, continuing t.partial if it is there; verify size and sha256."""
    if t.final.is_file() and t.final.stat().st_size == size:
        _link(t, revision, commit, repo)
        return t.link or t.final
    t.partial.parent.mkdir(parents=True, exist_ok=True)
    if partial_size(t) > size:  # not ours, or from another version of the file: start over
        t.partial.unlink()
    digest = _Digest(t.partial)
    done = digest.count
    progress(done, size)
    attempts = 0
    while done < size:
        try:
            done = _stream(url, t.partial, done, size, headers, digest, progress)
        except (OSError, DownloadError) as e:
            if isinstance(e, OSError) and e.errno == 28:  # ENOSPC
                raise DownloadError(
                    f"the disk filled up while downloading {t.final.name}",
                    hint="free some space and run the command again: the part already downloaded is kept",
                ) from None
            attempts += 1
            if attempts > RETRIES:
                raise DownloadError(
                    f"the download of {t.final.name} keeps failing ({e})",
                    hint=f"run the command again later: the {done / 1e9:.2f} GB already downloaded are kept",
                ) from None
            time.sleep(min(2**attempts, 30))
            done = partial_size(t)
            if done != digest.count:  # the hash must cover exactly the bytes on disk
                digest = _Digest(t.partial)
    if done != size:
        raise DownloadError(f"{t.final.name}: got {done:,} bytes, expected {size:,}")
    if sha256 and digest.hexdigest() != sha256:
        bad = t.partial.with_name(t.partial.name + ".corrupt")
        t.partial.rename(bad)  # kept for inspection, never used
        raise DownloadError(
            f"{t.final.name}: the downloaded bytes do not match the Hub's sha256",
            hint=f"run the command again to download it afresh (the bad copy is kept as {bad.name})",
        )
    t.partial.replace(t.final)
    _link(t, revision, commit, repo)
    return t.link or t.final


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


def _stream(
    url: str, partial: Path, done: int, size: int, headers: dict[str, str], digest: _Digest, progress: Progress
) -> int:
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    h = dict(headers)
    if done:
        h["Range"] = f"bytes={done}-"
    try:
        with get_session().stream("GET", url, headers=h, follow_redirects=True, timeout=60) as r:
            if r.status_code >= 400:
                r.read()
                hf_raise_for_status(r)
            if done and r.status_code != 206:  # the server ignored Range: only a fresh start is safe
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
