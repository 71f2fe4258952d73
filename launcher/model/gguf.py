"""GGUF header reader over any byte source that can serve ranges.

Pure parsing: the only I/O is through the ByteSource passed in (a local file,
bytes in memory, or a remote file fetched by HTTP range requests). Only the
header is read: metadata and tensor infos, never tensor data.

Every count and length comes from the file, so each one is checked against
the bytes the source really has before anything is allocated; a corrupt,
truncated or hostile header raises GGUFError and nothing else. The rules are
llama.cpp's (ggml/src/gguf.cpp): what it refuses, we refuse.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from launcher.errors import GGUFError
from launcher.model.ggml_types import REMOVED_TYPE_IDS, TYPES_BY_ID, GGMLType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses names of this length or more
INT64_MAX = 2**63 - 1

# GGUF value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(8, 13)

_SCALAR_FORMATS: dict[int, str] = {
    T_UINT8: "B", T_INT8: "b", T_UINT16: "H", T_INT16: "h", T_UINT32: "I", T_INT32: "i",
    T_FLOAT32: "f", T_BOOL: "?", T_UINT64: "Q", T_INT64: "q", T_FLOAT64: "d",
}  # fmt: skip
VALUE_TYPE_NAMES = {
    T_UINT8: "u8", T_INT8: "i8", T_UINT16: "u16", T_INT16: "i16", T_UINT32: "u32", T_INT32: "i32",
    T_FLOAT32: "f32", T_BOOL: "bool", T_STRING: "string", T_ARRAY: "array", T_UINT64: "u64",
    T_INT64: "i64", T_FLOAT64: "f64",
}  # fmt: skip

_U64 = struct.Struct("<Q")

# Smallest encoding of one item, used to bound counts before reading them.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

# First read: most headers are a few MB (vocabularies dominate); files smaller than this are read whole.
DEFAULT_FIRST_READ = 8 * 1024 * 1024


class ByteSource(Protocol):
    """Anything that can return bytes [offset, offset+length) of a file of known size."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


class FileSource:
    """A local file, read with pread: only the ranges asked for are touched."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise GGUFError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file") from None
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror}") from None
        st = os.fstat(self._fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file")
        self._size = st.st_size
        self.bytes_read = 0

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as e:
            raise GGUFError(f"{self.path}: read failed at byte {offset}: {e.strerror}") from None
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """Bytes in memory; `size` may exceed the bytes held (a cached header prefix of a larger file)."""

    def __init__(self, data: bytes, name: str = "<bytes>", size: int | None = None) -> None:
        self._data = data
        self._name = name
        self._size = len(data) if size is None else size

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml `ne` order: ne[0] (the row length) first
    type: GGMLType
    offset: int  # from the start of the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    source_name: str
    version: int
    metadata: Mapping[str, Any]  # scalars as int/float/bool/str, arrays as tuples
    value_types: Mapping[str, tuple[int, int | None]]  # key -> (type, array element type or None)
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int  # absolute offset of the data section
    file_size: int

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data the header describes (with alignment padding between tensors)."""
        if not self.tensors:
            return 0
        last = self.tensors[-1]
        return last.offset + last.nbytes


class _Reader:
    """A cursor over a growing prefix of the source; every read is bounds-checked first."""

    def __init__(self, source: ByteSource, first_read: int) -> None:
        self.source = source
        self.size = source.size
        self.buf = bytearray()
        self.pos = 0
        self.first_read = max(first_read, 64)
        self.what = "the header"

    def fail(self, message: str) -> GGUFError:
        return GGUFError(f"{self.source.name}: {message}", hint=_HINT)

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int) -> None:
        end = self.pos + n
        if end <= len(self.buf):
            return
        if end > self.size:
            raise self.fail(
                f"truncated: reading {self.what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes"
            )
        # Grow geometrically so a remote source makes few requests.
        want = max(end - len(self.buf), len(self.buf), self.first_read)
        want = min(want, self.size - len(self.buf))
        data = self.source.read(len(self.buf), want)
        self.buf += data
        if len(self.buf) < end:
            raise self.fail(
                f"truncated: reading {self.what} needs bytes up to offset {end}, but only {len(self.buf)} could be read"
            )

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, *, limit: int | None = None) -> bytes:
        n = self.unpack("Q")
        if n > self.remaining():
            raise self.fail(
                f"{self.what}: string length {n} at offset {self.pos - 8} runs past the end of the file "
                f"({self.size} bytes)"
            )
        if limit is not None and n >= limit:
            raise self.fail(f"{self.what}: string of {n} bytes is too long (limit {limit - 1})")
        self.need(n)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def text(self, *, limit: int | None = None) -> str:
        raw = self.string(limit=limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{self.what}: not valid UTF-8: {raw[:40]!r}") from None

    def _strings(self, count: int, key: str) -> tuple[str, ...]:
        """A vocabulary (100k+ strings): the same checks as string(), in a tight loop."""
        out = []
        buf, pos, size = self.buf, self.pos, self.size
        for _ in range(count):
            if pos + 8 > len(buf):
                self.pos = pos
                self.need(8)
                buf = self.buf
            n = _U64.unpack_from(buf, pos)[0]
            pos += 8
            if n > size - pos:
                raise self.fail(f"key {key!r}: string length {n} at offset {pos - 8} runs past the end of the file")
            if pos + n > len(buf):
                self.pos = pos
                self.need(n)
                buf = self.buf
            out.append(buf[pos : pos + n].decode("utf-8", "replace"))
            pos += n
        self.pos = pos
        return tuple(out)

    def array(self, elem_type: int, count: int, key: str) -> tuple[Any, ...]:
        if elem_type == T_STRING:
            if count * 8 > self.remaining():
                raise self.fail(f"key {key!r}: array of {count} strings runs past the end of the file")
            return self._strings(count, key)
        if elem_type == T_ARRAY:
            raise self.fail(f"key {key!r}: arrays of arrays are not allowed")
        fmt = _SCALAR_FORMATS.get(elem_type)
        if fmt is None:
            raise self.fail(f"key {key!r}: array element type {elem_type} is not a GGUF type")
        nbytes = count * struct.calcsize(fmt)
        if nbytes > self.remaining():
            raise self.fail(
                f"key {key!r}: array of {count} {VALUE_TYPE_NAMES[elem_type]} ({nbytes} bytes) "
                f"runs past the end of the file"
            )
        self.need(nbytes)
        values = struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos)
        self.pos += nbytes
        return values


_HINT = "the file is damaged or incomplete: download it again (runq never deletes it for you)"


def read_header(source: ByteSource, *, first_read: int = DEFAULT_FIRST_READ) -> GGUFHeader:
    """Parse the header of one GGUF file. Raises GGUFError for anything malformed.
    Phases, in file order: preamble (magic, version, counts), metadata, tensor infos, data layout."""
    r = _Reader(source, first_read)
    version, n_tensors, n_kv = _read_preamble(r)
    metadata, value_types = _read_metadata(r, n_kv)
    alignment = _alignment(r, metadata, value_types)
    raw = _read_tensor_infos(r, n_tensors)
    tensors = tuple(_tensor_info(r, name, shape, type_id, offset) for name, shape, type_id, offset in raw)
    data_offset = _pad(r.pos, alignment) if tensors else r.pos
    _check_data_layout(r, tensors, alignment, data_offset)
    return GGUFHeader(
        source_name=source.name,
        version=version,
        metadata=metadata,
        value_types=value_types,
        tensors=tensors,
        alignment=alignment,
        data_offset=data_offset,
        file_size=r.size,
    )


def _read_preamble(r: _Reader) -> tuple[int, int, int]:
    """(version, tensor count, key count), each checked against what the file could hold."""
    r.what = "the magic number"
    r.need(4)
    magic = bytes(r.buf[0:4])
    if magic != GGUF_MAGIC:
        raise r.fail(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    r.pos = 4
    r.what = "the version"
    version = r.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        if struct.unpack(">I", struct.pack("<I", version))[0] in SUPPORTED_VERSIONS:
            raise r.fail("big-endian GGUF files are not supported")
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    r.what = "the tensor and key counts"
    n_tensors = r.unpack("Q")
    n_kv = r.unpack("Q")
    if n_kv * _MIN_KV_BYTES > r.remaining():
        raise r.fail(f"header claims {n_kv} metadata keys, more than the file could hold")
    if n_tensors * _MIN_TENSOR_INFO_BYTES > r.remaining():
        raise r.fail(f"header claims {n_tensors} tensors, more than the file could hold")
    return version, n_tensors, n_kv


def _read_metadata(r: _Reader, n_kv: int) -> tuple[dict[str, Any], dict[str, tuple[int, int | None]]]:
    """Every key/value pair, and each value's GGUF type (element type for arrays)."""
    metadata: dict[str, Any] = {}
    value_types: dict[str, tuple[int, int | None]] = {}
    for i in range(n_kv):
        r.what = f"metadata key #{i}"
        key = r.text()
        r.what = f"metadata key {key!r}"
        if key in metadata:
            raise r.fail(f"duplicate metadata key {key!r}")
        vtype = r.unpack("I")
        if vtype == T_ARRAY:
            etype = r.unpack("I")
            count = r.unpack("Q")
            metadata[key] = r.array(etype, count, key)
            value_types[key] = (T_ARRAY, etype)
        elif vtype == T_STRING:
            metadata[key] = r.string().decode("utf-8", "replace")
            value_types[key] = (T_STRING, None)
        elif vtype in _SCALAR_FORMATS:
            metadata[key] = r.unpack(_SCALAR_FORMATS[vtype])
            value_types[key] = (vtype, None)
        else:
            raise r.fail(f"metadata key {key!r} has unknown value type {vtype}")
    return metadata, value_types


def _alignment(r: _Reader, metadata: dict[str, Any], value_types: dict[str, tuple[int, int | None]]) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    if value_types["general.alignment"] != (T_UINT32, None):
        raise r.fail("general.alignment must be a u32")
    alignment = int(metadata["general.alignment"])
    if alignment == 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment} is not a power of two")
    return alignment


def _read_tensor_infos(r: _Reader, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape, type id, offset) of every tensor; names unique, shapes sane."""
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        r.what = f"tensor info #{i}"
        name = r.text(limit=MAX_TENSOR_NAME)
        r.what = f"tensor {name!r}"
        if name in names:
            raise r.fail(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = r.unpack("I")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(r.unpack("q") for _ in range(n_dims))
        if any(d < 0 for d in shape):
            raise r.fail(f"tensor {name!r} has a negative dimension: {shape}")
        n = 1
        for d in shape:
            n *= d
            if n > INT64_MAX:
                raise r.fail(f"tensor {name!r} has absurd dimensions {shape}")
        type_id = r.unpack("i")
        offset = r.unpack("Q")
        raw.append((name, shape, type_id, offset))
    return raw


def _check_data_layout(r: _Reader, tensors: tuple[TensorInfo, ...], alignment: int, data_offset: int) -> None:
    """Tensor data packed in order at aligned offsets, and all of it inside the file (else: truncated)."""
    expected = 0
    for t in tensors:
        if t.offset != expected:
            raise r.fail(f"tensor {t.name!r} has data offset {t.offset}, expected {expected}")
        expected = _pad(t.offset + t.nbytes, alignment)
    if tensors:
        end = data_offset + tensors[-1].offset + tensors[-1].nbytes
        if end > r.size:
            raise r.fail(
                f"truncated: tensor data ends at byte {end}, but the file has {r.size} bytes "
                f"({(end - r.size) / 2**20:.1f} MiB missing: an incomplete download?)"
            )


def _tensor_info(r: _Reader, name: str, shape: tuple[int, ...], type_id: int, offset: int) -> TensorInfo:
    gtype = TYPES_BY_ID.get(type_id)
    if gtype is None:
        if type_id in REMOVED_TYPE_IDS:
            raise r.fail(
                f"tensor {name!r} uses ggml type {REMOVED_TYPE_IDS[type_id]} (id {type_id}), "
                f"which llama.cpp no longer supports"
            )
        raise r.fail(f"tensor {name!r} has unknown ggml type id {type_id}")
    row = shape[0] if shape else 1
    if row % gtype.block_elems:
        raise r.fail(
            f"tensor {name!r}: row of {row} elements is not a multiple of the {gtype.name} "
            f"block size {gtype.block_elems}"
        )
    n = 1
    for d in shape:
        n *= d
    return TensorInfo(name=name, shape=shape, type=gtype, offset=offset, nbytes=gtype.nbytes(n))


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def read_file_header(path: str | os.PathLike[str], **kw: Any) -> GGUFHeader:
    with FileSource(path) as src:
        return read_header(src, **kw)
