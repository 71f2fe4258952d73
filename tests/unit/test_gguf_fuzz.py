"""Property tests: truncated and mutated headers of real generated files raise GGUFError, nothing else.

The default run tries 10,000+ cases (the sum of max_examples below). Allocation
is bounded by the input: tracemalloc's peak stays proportional to the file size
even when a mutated header claims 2^64 tensors or a terabyte string.
"""

from __future__ import annotations

import struct
import tracemalloc
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.errors import GGUFError
from launcher.measure.synth import SynthSpec, write_model
from launcher.model.gguf import BytesSource, GGUFHeader, read_header

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@cache
def _files() -> tuple[bytes, ...]:
    import tempfile
    from pathlib import Path

    out = []
    with tempfile.TemporaryDirectory() as d:
        for spec in (
            SynthSpec(arch="deepseek2", n_layer=2, n_merges=8, n_embd=32, n_ff=32, n_expert=4),
            SynthSpec(arch="qwen3moe", n_layer=2, n_merges=8, n_embd=32, n_expert=4, weight_type="F16"),
        ):
            m = write_model(spec, Path(d) / f"{spec.arch}.gguf")
            out.append(m.path.read_bytes())
    return tuple(out)


def _header_len(data: bytes) -> int:
    return read_header(BytesSource(data)).data_offset


def _parse(data: bytes) -> GGUFHeader | None:
    try:
        h = read_header(BytesSource(data, "fuzz.gguf"), first_read=256)
    except GGUFError as e:
        assert str(e).startswith("fuzz.gguf: ")
        return None
    # Whatever parses is self-consistent: all tensor data lies inside the file.
    assert h.data_offset + h.data_bytes <= len(data)
    for t in h.tensors:
        assert t.nbytes >= 0
    return h


file_index = st.integers(min_value=0, max_value=1)


@settings(FUZZ, max_examples=2000)
@given(which=file_index, cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncated_files(which: int, cut: float) -> None:
    data = _files()[which]
    n = int(len(data) * cut)
    result = _parse(data[:n])
    if n < len(data):
        assert result is None  # every byte of these files is needed: a cut is always noticed


@settings(FUZZ, max_examples=4000)
@given(which=file_index, edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_byte_mutations_in_the_header(which: int, edits: list[tuple[float, int]]) -> None:
    data = bytearray(_files()[which])
    end = _header_len(bytes(data))
    for where, value in edits:
        data[int(where * (end - 1))] = value
    _parse(bytes(data))


EDGE_U64 = [0, 1, 2, 31, 32, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


@settings(FUZZ, max_examples=3000)
@given(
    which=file_index,
    where=st.floats(0, 1),
    value=st.one_of(st.sampled_from(EDGE_U64), st.integers(0, 2**64 - 1)),
    width=st.sampled_from([4, 8]),
)
def test_length_and_count_fields_set_to_edge_values(which: int, where: float, value: int, width: int) -> None:
    data = bytearray(_files()[which])
    end = _header_len(bytes(data))
    pos = int(where * (end - width))
    data[pos : pos + width] = struct.pack("<Q" if width == 8 else "<I", value % (2 ** (8 * width)))
    _parse(bytes(data))


@settings(FUZZ, max_examples=1000)
@given(which=file_index, where=st.floats(0, 1), cut=st.integers(1, 64), insert=st.binary(max_size=64))
def test_spliced_headers(which: int, where: float, cut: int, insert: bytes) -> None:
    data = _files()[which]
    end = _header_len(data)
    pos = int(where * (end - 1))
    _parse(data[:pos] + insert + data[pos + cut :])


@settings(FUZZ, max_examples=300)
@given(
    which=file_index,
    where=st.floats(0, 1),
    value=st.sampled_from([2**40, 2**50, 2**62, 2**63 - 1, 2**64 - 1]),
)
def test_hostile_counts_allocate_no_more_than_the_file(which: int, where: float, value: int) -> None:
    data = bytearray(_files()[which])
    end = _header_len(bytes(data))
    pos = int(where * (end - 8))
    data[pos : pos + 8] = struct.pack("<Q", value)
    tracemalloc.start()
    try:
        _parse(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Python objects cost more than their bytes on disk; what matters is "bounded by the input".
    assert peak < 64 * len(data) + (1 << 20)
