"""Header-only replicas: a split set's exact GGUF headers, same file names and sizes, tensor data as holes.

Edge module (it writes files). `llama-fit-params` reads only a model's metadata, so
a sparse copy of the headers is enough for llama.cpp to project its memory for a
quant that is not downloaded (a 250 GB DeepSeek-V3.1 set takes a few MB of disk).
Replicas of Hub quants live next to the header cache (cache_dir()/hub/<repo>/replicas/),
keyed by the files' sha256/etag, so removing the hub cache removes them too. A
filesystem that cannot make sparse files is detected (st_blocks) and refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import NotSparse
from launcher.model.gguf import read_file_header
from launcher.paths import runq_hub_dir

# A replica may take its header bytes plus this much (filesystems allocate a block or two at the end).
SPARSE_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class HeaderFile:
    """One file of a set: its name, its header bytes (up to the data section) and its full size."""

    name: str  # file name only (…-00001-of-00006.gguf): llama.cpp finds the other shards by name
    header: bytes
    size: int
    ident: str = ""  # sha256 or etag of the real file, when known


def replica_key(files: Sequence[HeaderFile]) -> str:
    """A short key for the set: the files' sha/etag when known, else a hash of the header bytes and sizes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.size}\0{f.ident}\0".encode())
        if not f.ident:
            h.update(hashlib.sha256(f.header).digest())
    return h.hexdigest()[:16]


def hub_replica_dir(repo: str, files: Sequence[HeaderFile]) -> Path:
    return runq_hub_dir(repo) / "replicas" / replica_key(files)


def local_header_files(first: Path) -> list[HeaderFile]:
    """The header set of a local file or split set (shard 1 given)."""
    from launcher.model.shards import shard_names

    out = []
    for name in shard_names(str(first)):
        p = Path(name)
        header = read_file_header(p)
        with p.open("rb") as fh:
            out.append(HeaderFile(p.name, fh.read(header.data_offset), p.stat().st_size))
    return out


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def write_replica(files: Sequence[HeaderFile], dest: Path) -> Path:
    """The replica of `files` in directory `dest` (reused when already complete); returns shard 1's path.
    Raises NotSparse (and leaves nothing behind) where the filesystem fills holes."""
    first = dest / files[0].name
    if _complete(files, dest):
        return first
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in files:
            p = tmp / f.name
            with p.open("wb") as fh:
                fh.write(f.header)
                fh.truncate(f.size)
            if allocated_bytes(p) > len(f.header) + SPARSE_SLACK_BYTES:
                raise NotSparse(
                    f"the filesystem of {tmp} cannot make sparse files: a replica of {f.name} would take "
                    f"{allocated_bytes(p) >> 20} MiB of disk",
                    hint="planning continues with runq's own estimates",
                )
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return first


def _complete(files: Sequence[HeaderFile], dest: Path) -> bool:
    for f in files:
        p = dest / f.name
        try:
            if p.stat().st_size != f.size:
                return False
            with p.open("rb") as fh:
                if fh.read(len(f.header)) != f.header:
                    return False
        except OSError:
            return False
    return True


def disk_bytes(dest: Path) -> int:
    """What a replica really takes on disk."""
    return sum(allocated_bytes(p) for p in dest.iterdir() if p.is_file())


def hub_replica(repo: str, first_path: str) -> Path | None:
    """A header-only replica of a Hub quant from the cached listing and headers; None if they are not cached."""
    from launcher.errors import Offline
    from launcher.hub.client import list_repo, snapshot_dir
    from launcher.hub.headers import header_cache_path
    from launcher.hub.layout import group_quants

    try:
        listing = list_repo(repo, network=False)
    except Offline:
        return None
    found = next((q for q in group_quants(listing.files) if q.first.path == first_path), None)
    if found is None:
        return None
    snap = snapshot_dir(repo)
    if snap is not None and all((snap / f.path).is_file() and (snap / f.path).stat().st_size == f.size
                                for f in found.files):  # fmt: skip
        return snap / found.first.path  # downloaded: llama.cpp reads the headers of the files themselves
    files = []
    for f in found.files:
        sha = listing.sha256.get(f.path)
        cached = header_cache_path(repo, f.path, sha, f.size)
        if not cached.is_file():
            return None
        files.append(HeaderFile(Path(f.path).name, cached.read_bytes(), f.size, sha or ""))
    return write_replica(files, hub_replica_dir(repo, files))
