"""Describing machines (flags, JSON) and probing this one."""

from __future__ import annotations

import json
import os

import pytest

from launcher.errors import UsageError
from launcher.machine.probe import probe
from launcher.machine.spec import GPU, machine_from_json, override, parse_gpu_flag
from launcher.units import GiB, MiB, fmt_bytes, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("24GiB", 24 * GiB),
        ("24 GiB", 24 * GiB),
        ("24G", 24 * GiB),
        ("24GB", 24 * 10**9),
        ("1.5TiB", int(1.5 * 1024 * GiB)),
        ("512MiB", 512 * MiB),
        ("512mb", 512 * 10**6),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "message"), [("24", "no unit"), ("lots", "cannot read"), ("3 parsecs", "unknown unit")]
)
def test_parse_size_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as e:
        parse_size(text)
    assert e.value.hint


def test_fmt_bytes() -> None:
    assert fmt_bytes(24 * GiB) == "24.0 GiB"
    assert fmt_bytes(1.5 * GiB) == "1.50 GiB"
    assert fmt_bytes(512 * MiB) == "512 MiB"
    assert fmt_bytes(17) == "17 B"


def test_gpu_flags() -> None:
    assert parse_gpu_flag("24GiB") == [24 * GiB]
    assert parse_gpu_flag("2x80GiB") == [80 * GiB, 80 * GiB]
    assert parse_gpu_flag("none") == []
    with pytest.raises(UsageError):
        parse_gpu_flag("0x24GiB")
    with pytest.raises(UsageError):
        parse_gpu_flag("24")


def test_machine_json() -> None:
    m = machine_from_json(
        json.dumps(
            {
                "gpus": [
                    {
                        "name": "RTX 4090",
                        "memory": "24GiB",
                        "compute_capability": "8.9",
                        "bandwidth": "1008GB",
                    }
                ],
                "ram": "256GiB",
                "cores": 16,
            }
        )
    )
    assert m.source == "described"
    assert m.gpus[0].total_bytes == 24 * GiB and m.gpus[0].free_bytes == 24 * GiB
    assert m.gpus[0].sm == "89"
    assert m.gpus[0].memory_bandwidth == 1008e9
    assert m.ram_available_bytes == 256 * GiB and m.cores == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"gpus": []}', "ram: Field required"),
        ('{"ram": "256GiB", "colour": "red"}', "colour: Extra inputs are not permitted"),
        ('{"ram": "256 parsecs"}', "ram: unknown unit"),
        (
            '{"ram": "1GiB", "gpus": [{"memory": "8GiB", "compute_capability": "eight"}]}',
            "gpus.0.compute_capability",
        ),
        ('{"ram": "1GiB", "cores": 0}', "cores"),
    ],
)
def test_machine_json_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="box.json: ") as e:
        machine_from_json(text, "box.json")
    assert message in e.value.message


def test_override_keeps_what_was_not_described() -> None:
    base = probe(cpu_details=False)
    m = override(base, gpus=[24 * GiB], ram=256 * GiB)
    assert m.source == "mixed"
    assert [g.total_bytes for g in m.gpus] == [24 * GiB]
    assert m.ram_total_bytes == 256 * GiB
    assert m.cpu == base.cpu
    assert override(base) is base
    cpu_only = override(base, gpus=[])
    assert cpu_only.gpus == () and cpu_only.gpu_note == "described without GPUs"


def test_bandwidth_from_bus_width_and_clock() -> None:
    h100 = GPU(0, "H100", 80 * GiB, 80 * GiB, (9, 0), mem_bus_width_bits=5120, mem_clock_mhz=2619)
    assert h100.memory_bandwidth == pytest.approx(3.35e12, rel=0.01)


def test_probe_here_reports_why_there_is_no_gpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    m = probe(disk_path=tmp_path / "not" / "yet")
    assert os.environ == env  # the probe never changes the environment
    assert m.source == "probed"
    assert m.ram_total_bytes > 0 and m.ram_available_bytes > 0
    assert m.cpu.logical_cores and m.cpu.logical_cores >= 1
    assert m.disk_free_bytes and m.disk_free_bytes > 0
    if not m.gpus:  # this machine and CI: no NVIDIA driver
        assert m.gpu_note
