"""One model from one GGUF file or a split set (`…-00001-of-0000N.gguf`).

Pure parsing: `combine()` checks a list of shard headers against each other and
presents one model (every tensor with its shard, absolute offset, size, layer
and role). `open_local()` is the thin I/O part for files on disk; the remote
reader feeds `combine()` the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import GGUFError
from launcher.model.gguf import GGUFHeader, read_file_header
from launcher.model.hparams import HParams
from launcher.model.tensors import ModelTensor, TensorSet, classify

SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

KEY_SPLIT_NO = "split.no"
KEY_SPLIT_COUNT = "split.count"
KEY_SPLIT_TENSORS = "split.tensors.count"


@dataclass(frozen=True, slots=True)
class Shard:
    name: str  # path or URL
    size: int  # file size in bytes
    data_offset: int
    n_tensors: int


@dataclass(frozen=True)
class GGUFModel:
    shards: tuple[Shard, ...]
    metadata: Mapping[str, Any]  # shard 1's metadata
    tensors: TensorSet
    hparams: HParams

    @property
    def name(self) -> str:
        return self.shards[0].name

    @property
    def file_bytes(self) -> int:
        return sum(s.size for s in self.shards)


def shard_names(first: str) -> list[str]:
    """All shard file names of a set, given shard 1's name (a path or URL); [first] if not split."""
    base = first.rsplit("/", 1)
    m = SHARD_RE.match(base[-1])
    if m is None:
        return [first]
    if int(m.group("no")) != 1:
        raise GGUFError(
            f"{first} is shard {int(m.group('no'))} of a split set",
            hint=f"give the first shard: {m.group('prefix')}-00001-of-{m.group('count')}.gguf",
        )
    count = int(m.group("count"))
    if count < 1:
        raise GGUFError(f"{first}: a split set of {count} shards makes no sense")
    parent = base[0] + "/" if len(base) == 2 else ""
    return [f"{parent}{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _check_split(headers: Sequence[GGUFHeader]) -> None:
    """The shards are one set, complete and in order: split.count, split.no and split.tensors.count agree."""
    first = headers[0]
    md = first.metadata
    count = len(headers)
    declared = md.get(KEY_SPLIT_COUNT)
    if declared is None:
        if count != 1:
            raise GGUFError(f"{first.source_name}: has no split.count key but {count} shards were given")
        return
    if declared != count:
        raise GGUFError(f"{first.source_name}: split.count is {declared}, but {count} shards were found")
    total = md.get(KEY_SPLIT_TENSORS)
    for i, h in enumerate(headers):
        no = h.metadata.get(KEY_SPLIT_NO)
        if no != i:
            raise GGUFError(
                f"{h.source_name}: split.no is {no}, expected {i} (shard {i + 1} of {count})",
                hint="the shards come from different sets or were renamed",
            )
        if h.metadata.get(KEY_SPLIT_COUNT) != count:
            raise GGUFError(f"{h.source_name}: split.count disagrees with shard 1 ({count})")
        if h.metadata.get(KEY_SPLIT_TENSORS, total) != total:
            raise GGUFError(f"{h.source_name}: split.tensors.count disagrees with shard 1 ({total})")
    n = sum(len(h.tensors) for h in headers)
    if total is not None and n != total:
        raise GGUFError(
            f"{first.source_name}: the shards hold {n} tensors, split.tensors.count says {total}",
            hint="a shard is from another version of the model: download the set again",
        )


def combine(headers: Sequence[GGUFHeader]) -> GGUFModel:
    """Check a set of shard headers (in shard order) and present them as one model."""
    if not headers:
        raise GGUFError("no GGUF files given")
    first = headers[0]
    md = first.metadata
    _check_split(headers)
    tensors: list[ModelTensor] = []
    seen: dict[str, int] = {}
    for i, h in enumerate(headers):
        for t in h.tensors:
            if t.name in seen:
                raise GGUFError(f"tensor {t.name!r} appears in shard {seen[t.name] + 1} and shard {i + 1}")
            seen[t.name] = i
            layer, role = classify(t.name)
            tensors.append(
                ModelTensor(
                    name=t.name,
                    shape=t.shape,
                    type=t.type,
                    nbytes=t.nbytes,
                    shard=i,
                    offset=h.data_offset + t.offset,
                    layer=layer,
                    role=role,
                )
            )
    shards = tuple(
        Shard(name=h.source_name, size=h.file_size, data_offset=h.data_offset, n_tensors=len(h.tensors))
        for h in headers
    )
    return GGUFModel(
        shards=shards,
        metadata=md,
        tensors=TensorSet(tuple(tensors)),
        hparams=HParams.from_metadata(md, first.source_name),
    )


def open_local(path: str | Path) -> GGUFModel:
    """Read the header of a local GGUF file, or of every shard of a split set given shard 1."""
    p = Path(path)
    if len(str(p)) > MAX_PATH or len(p.name) > MAX_NAME:
        raise GGUFError(f"{str(p)[:80]}…: a file name this long cannot exist here",
                        hint="give the path of a .gguf file")  # fmt: skip
    names = shard_names(str(p))
    missing = [n for n in names if not Path(n).is_file()]
    if missing and len(names) > 1:
        shown = ", ".join(Path(n).name for n in missing[:3]) + (" …" if len(missing) > 3 else "")
        raise GGUFError(
            f"{len(missing)} of {len(names)} shards missing next to {p.name}: {shown}",
            hint="download the missing shards (runq never deletes the ones you have)",
        )
    return combine([read_file_header(n) for n in names])  # one file: the reader names what is wrong with it


MAX_PATH = 4096  # Linux PATH_MAX
MAX_NAME = 255  # NAME_MAX
