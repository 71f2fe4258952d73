"""What is on disk: GGUF quants in the Hugging Face cache (or a download dir), with sizes and completeness.

Reads file names, sizes and GGUF headers only; never modifies or deletes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.errors import GGUFError
from launcher.hub.layout import RemoteFile, group_quants
from launcher.model.shards import SHARD_RE, open_local
from launcher.paths import hf_cache_dir


@dataclass(frozen=True)
class LocalQuant:
    repo: str  # "org/name", or the directory for a plain download dir
    name: str
    first: Path
    files_present: int
    files_expected: int
    bytes_on_disk: int
    complete: bool
    problem: str | None  # why it is not complete


@dataclass(frozen=True)
class PartialDownload:
    repo: str
    files: int
    bytes_so_far: int


def _quants_in(root: Path, repo: str) -> list[LocalQuant]:
    files = [p for p in root.rglob("*.gguf") if p.is_file() and ".cache" not in p.relative_to(root).parts]
    by_rel = {str(p.relative_to(root)): p for p in files}
    out = []
    for q in group_quants(RemoteFile(rel, p.stat().st_size) for rel, p in by_rel.items()):
        paths = [by_rel[f.path] for f in q.files]
        m = SHARD_RE.match(paths[0].name)
        expected = int(m.group("count")) if m else 1
        problem = None
        if m and int(m.group("no")) != 1:
            problem = "shard 1 is missing"
        else:
            try:
                open_local(paths[0])  # every shard's header, counts and sizes
            except GGUFError as e:
                problem = e.message
        out.append(
            LocalQuant(
                repo=repo,
                name=q.name,
                first=paths[0],
                files_present=len(paths),
                files_expected=expected,
                bytes_on_disk=q.size_bytes,
                complete=problem is None,
                problem=problem,
            )
        )
    return out


def scan_hf_cache(cache: Path | None = None) -> tuple[list[LocalQuant], list[PartialDownload]]:
    root = cache or hf_cache_dir()
    quants: list[LocalQuant] = []
    partial: list[PartialDownload] = []
    if not root.is_dir():
        return quants, partial
    for repo_dir in sorted(root.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        for snap in sorted((repo_dir / "snapshots").glob("*")):
            quants += _quants_in(snap, repo)
        blobs = list((repo_dir / "blobs").glob("*.incomplete"))
        if blobs:
            partial.append(PartialDownload(repo, len(blobs), sum(b.stat().st_size for b in blobs)))
    return quants, partial


def scan_dir(root: Path) -> tuple[list[LocalQuant], list[PartialDownload]]:
    quants = _quants_in(root, str(root))
    blobs = list((root / ".cache" / "huggingface" / "download").rglob("*.incomplete"))
    partial = [PartialDownload(str(root), len(blobs), sum(b.stat().st_size for b in blobs))] if blobs else []
    return quants, partial
