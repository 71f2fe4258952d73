"""The GGUF header reader against the official gguf package, and its error paths."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from launcher.errors import GGUFError
from launcher.measure.synth import SynthModel
from launcher.model.ggml_types import TYPES_BY_ID
from launcher.model.gguf import BytesSource, FileSource, read_file_header, read_header


def test_type_table_matches_gguf_package() -> None:
    ours = {t.id: (t.block_elems, t.block_bytes) for t in TYPES_BY_ID.values()}
    theirs = {int(k): v for k, v in gguf.GGML_QUANT_SIZES.items()}
    # Every type the package knows, we know with the same sizes.
    for type_id, sizes in theirs.items():
        assert ours[type_id] == sizes, gguf.GGMLQuantizationType(type_id).name
    assert TYPES_BY_ID[42].name == "Q2_0"  # in ggml at the pinned commit, newer than the package


def test_bits_per_weight_of_the_common_types() -> None:
    bpw = {t.name: t.bits_per_weight for t in TYPES_BY_ID.values()}
    assert bpw["Q2_K"] == 2.625
    assert bpw["Q4_K"] == 4.5
    assert bpw["IQ1_S"] == 1.5625
    assert bpw["TQ1_0"] == 1.6875
    assert bpw["MXFP4"] == 4.25


def test_q1_0_is_ggmls_one_bit_type() -> None:
    """ggml.h GGML_TYPE_Q1_0 = 41; ggml-common.h block_q1_0 = an f16 scale + QK1_0 (128) sign bits; ggml.c's
    type_traits: blck_size QK1_0, type_size sizeof(block_q1_0). Unsloth's UD-Q1_0 quants use it for experts."""
    from launcher.model.ggml_types import type_by_name

    q1 = type_by_name("q1_0")
    assert (q1.id, q1.block_elems, q1.block_bytes) == (41, 128, 2 + 128 // 8)
    assert q1.bits_per_weight == 1.125 and TYPES_BY_ID[41] is q1
    assert q1.nbytes(4096 * 128) == 4096 * 18
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q1_0] == (128, 18)


def _contents_equal(ours: object, theirs: object) -> bool:
    if isinstance(ours, tuple):
        return list(ours) == list(theirs)  # type: ignore[arg-type]
    if isinstance(ours, float):
        return math.isclose(ours, float(theirs), rel_tol=0, abs_tol=0)  # type: ignore[arg-type]
    return ours == theirs


def test_differential_against_gguf_reader(any_model: SynthModel) -> None:
    for path in any_model.paths:
        ours = read_file_header(path)
        ref = gguf.GGUFReader(path)
        ref_tensors = {t.name: t for t in ref.tensors}
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
        for t in ours.tensors:
            r = ref_tensors[t.name]
            assert t.type.id == int(r.tensor_type)
            assert list(t.shape) == [int(d) for d in r.shape]
            assert t.nbytes == int(r.n_bytes)
            assert ours.data_offset + t.offset == int(r.data_offset)
            assert t.n_elements == int(r.n_elements)
        ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
        assert list(ours.metadata) == ref_keys
        for key in ref_keys:
            field = ref.fields[key]
            assert ours.value_types[key][0] == int(field.types[0])
            assert _contents_equal(ours.metadata[key], field.contents()), key
        assert ours.file_size == Path(path).stat().st_size
        assert ours.data_offset + ours.data_bytes <= ours.file_size


def test_reads_only_the_header_of_a_huge_file(tmp_path: Path) -> None:
    """A 200 GB (sparse) file: the reader touches a few KB at its start, nothing else."""
    path = tmp_path / "huge.gguf"
    w = gguf.GGUFWriter(path, "deepseek2")
    w.add_uint32("deepseek2.block_count", 1)
    w.add_uint32("deepseek2.embedding_length", 7168)
    n = 7168 * 2048 * 256
    nbytes = n // 256 * 84
    for i in range(170):
        byte_shape = [256, 2048, 7168 // 256 * 84]  # numpy order, rows in bytes
        w.add_tensor_info(
            f"blk.{i}.ffn_up_exps.weight",
            byte_shape,
            np.dtype(np.uint8),
            nbytes,
            raw_dtype=gguf.GGMLQuantizationType.Q2_K,
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header_len = path.stat().st_size
    data_start = (header_len + 31) // 32 * 32
    per = (nbytes + 31) // 32 * 32
    with path.open("r+b") as f:
        f.truncate(data_start + per * 169 + nbytes)
    size = path.stat().st_size
    assert size > 200e9
    with FileSource(path) as src:
        h = read_header(src, first_read=4096)
        assert src.bytes_read < 64 * 1024
        assert src.bytes_read <= 4 * h.data_offset
    assert len(h.tensors) == 170
    assert h.data_offset + h.data_bytes == size


def _header_bytes(path: Path) -> bytes:
    h = read_file_header(path)
    return path.read_bytes()[: h.data_offset]


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def _ti(name: str, dims: list[int], type_id: int, offset: int) -> bytes:
    n = name.encode()
    return (
        struct.pack("<Q", len(n))
        + n
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<q", d) for d in dims)
        + struct.pack("<iQ", type_id, offset)
    )


def _file(kvs: list[bytes], tis: list[bytes], data_len: int = 0, version: int = 3) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tis), len(kvs)) + b"".join(kvs) + b"".join(tis)
    pad = (-len(head)) % 32
    return head + b"\0" * pad + b"\0" * data_len


ARCH = _kv("general.architecture", 8, struct.pack("<Q", 9) + b"deepseek2")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"GGML" + b"\0" * 40, "not a GGUF file"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 32, "unsupported GGUF version 1"),
        (b"GGUF" + struct.pack(">I", 3) + b"\0" * 32, "big-endian"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**62, 0), "claims 4611686018427387904 tensors"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40), "metadata keys"),
        (_file([_kv("a", 8, struct.pack("<Q", 2**50))], []), "string length"),
        (_file([_kv("a", 9, struct.pack("<IQ", 4, 2**40))], []), "runs past the end"),
        (_file([_kv("a", 9, struct.pack("<IQ", 8, 2**40))], []), "array of 1099511627776 strings"),
        (_file([_kv("a", 9, struct.pack("<IQ", 9, 1))], []), "arrays of arrays"),
        (_file([_kv("a", 13, b"\0" * 8)], []), "unknown value type 13"),
        (_file([_kv("a", 4, b"\1\0\0\0"), _kv("a", 4, b"\1\0\0\0")], []), "duplicate metadata key"),
        (_file([_kv("general.alignment", 4, struct.pack("<I", 3))], []), "not a power of two"),
        (_file([_kv("general.alignment", 10, struct.pack("<Q", 32))], []), "must be a u32"),
        (_file([ARCH], [_ti("w", [32], 99, 0)], 64), "unknown ggml type id 99"),
        (_file([ARCH], [_ti("w", [32], 31, 0)], 64), "Q4_0_4_4"),
        (_file([ARCH], [_ti("w", [32, 1, 1, 1, 1], 0, 0)], 256), "5 dimensions"),
        (_file([ARCH], [_ti("w", [-1], 0, 0)], 256), "negative dimension"),
        (_file([ARCH], [_ti("w", [2**40, 2**40], 0, 0)], 256), "absurd dimensions"),
        (_file([ARCH], [_ti("w", [33], 8, 0)], 256), "not a multiple of the Q8_0 block size 32"),
        (_file([ARCH], [_ti("w", [8], 0, 64)], 256), "has data offset 64, expected 0"),
        (_file([ARCH], [_ti("w", [8], 0, 0), _ti("w", [8], 0, 32)], 256), "duplicate tensor name"),
        (_file([ARCH], [_ti("x" * 64, [8], 0, 0)], 256), "too long"),
        (_file([ARCH], [_ti("w", [1024], 0, 0)], 100), "tensor data ends at byte"),
        (_file([_kv("\xff", 4, b"\0" * 4)], []).replace(b"\xc3\xbf", b"\xff\xfe"), "not valid UTF-8"),
    ],
)
def test_bad_headers_give_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(GGUFError, match="x.gguf: ") as e:
        read_header(BytesSource(data, "x.gguf"))
    assert message in str(e.value)
    assert e.value.hint


def test_truncated_real_file_names_the_missing_bytes(models: dict[str, SynthModel], tmp_path: Path) -> None:
    src = models["deepseek2-q8"].path
    data = src.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(GGUFError, match="an incomplete download"):
        read_file_header(cut)
    assert cut.stat().st_size == len(data) - 5000  # never touched


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file"):
        read_file_header(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="is a directory"):
        read_file_header(tmp_path)


def test_remote_style_source_grows_its_reads(models: dict[str, SynthModel]) -> None:
    """A source that fetches on demand gets a few growing requests, never the tensor data."""
    data = models["deepseek2-kquants"].path.read_bytes()
    requests: list[tuple[int, int]] = []

    class Recording(BytesSource):
        def read(self, offset: int, length: int) -> bytes:
            requests.append((offset, length))
            return super().read(offset, length)

    h = read_header(Recording(data, "remote"), first_read=1024)
    fetched = sum(n for _, n in requests)
    assert fetched < h.data_offset * 2 + 1024
    assert fetched < len(data)
    assert len(requests) <= math.ceil(math.log2(h.data_offset / 1024)) + 2
    # Requests are contiguous: each starts where the previous ended.
    assert all(requests[i + 1][0] == requests[i][0] + requests[i][1] for i in range(len(requests) - 1))
