"""Split sets, tensor classification and architecture facts of generated models."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest

from launcher.errors import GGUFError
from launcher.measure.synth import SynthModel, SynthSpec, tensor_shapes, write_model
from launcher.model.gguf import read_file_header
from launcher.model.shards import combine, open_local, shard_names
from launcher.model.tensors import Role, classify


@pytest.mark.parametrize(
    ("name", "layer", "role"),
    [
        ("token_embd.weight", None, Role.TOKEN_EMBD),
        ("output.weight", None, Role.OUTPUT),
        ("output_norm.weight", None, Role.NORM),
        ("rope_freqs.weight", None, Role.OTHER),
        ("blk.0.attn_norm.weight", 0, Role.NORM),
        ("blk.3.attn_q_a_norm.weight", 3, Role.NORM),
        ("blk.3.attn_kv_a_mqa.weight", 3, Role.ATTENTION),
        ("blk.3.attn_k_b.weight", 3, Role.ATTENTION),
        ("blk.12.attn_sinks.weight", 12, Role.ATTENTION),
        ("blk.0.ffn_gate.weight", 0, Role.DENSE_FFN),
        ("blk.0.ffn_down.weight", 0, Role.DENSE_FFN),
        ("blk.17.ffn_gate_exps.weight", 17, Role.ROUTED_EXPERT),
        ("blk.17.ffn_up_exps.weight", 17, Role.ROUTED_EXPERT),
        ("blk.17.ffn_down_exps.weight", 17, Role.ROUTED_EXPERT),
        ("blk.17.ffn_gate_up_exps.weight", 17, Role.ROUTED_EXPERT),
        ("blk.17.ffn_down_chexps.weight", 17, Role.ROUTED_EXPERT),
        ("blk.17.ffn_gate_exps.bias", 17, Role.ROUTED_EXPERT),
        ("blk.17.ffn_up_shexp.weight", 17, Role.SHARED_EXPERT),
        ("blk.17.ffn_gate_inp_shexp.weight", 17, Role.SHARED_EXPERT),
        ("blk.17.ffn_gate_inp.weight", 17, Role.ROUTER),
        ("blk.17.exp_probs_b.bias", 17, Role.ROUTER),
        ("blk.61.nextn.eh_proj.weight", 61, Role.MTP),
    ],
)
def test_classify(name: str, layer: int | None, role: Role) -> None:
    assert classify(name) == (layer, role)


def test_expert_bytes_per_layer_match_the_shapes(models: dict[str, SynthModel]) -> None:
    m = open_local(models["deepseek2-q8"].path)
    spec = models["deepseek2-q8"].spec
    per_expert_tensor = spec.n_embd * spec.n_ff_exp * spec.n_expert // 32 * 34  # Q8_0
    assert m.tensors.expert_layers == tuple(range(spec.n_dense_lead, spec.n_layer))
    for layer in m.tensors.expert_layers:
        assert m.tensors.expert_bytes(layer) == 3 * per_expert_tensor
    assert m.tensors.expert_bytes(0) == 0
    assert m.tensors.expert_bytes() + m.tensors.non_expert_bytes() == m.tensors.total_bytes
    assert sum(m.tensors.bytes_by_role().values()) == m.tensors.total_bytes


def test_fused_gate_up_counts_as_experts(models: dict[str, SynthModel]) -> None:
    m = open_local(models["deepseek2-fused"].path)
    names = [t.name for t in m.tensors.tensors if t.is_expert]
    assert "blk.2.ffn_gate_up_exps.weight" in names
    assert m.tensors.expert_layers == (2, 3, 4)


def test_hparams(models: dict[str, SynthModel]) -> None:
    ds = open_local(models["deepseek2-q8"].path).hparams
    assert (ds.arch, ds.n_layer, ds.n_expert, ds.n_expert_used, ds.n_dense_lead) == ("deepseek2", 4, 8, 2, 1)
    assert ds.is_mla and ds.key_length == 48 and ds.value_length == 32 and ds.n_head_kv == (1,) * 4
    qw = open_local(models["qwen3moe-q8"].path).hparams
    assert (qw.arch, qw.n_layer, qw.n_head_kv[0], qw.key_length, qw.is_mla) == ("qwen3moe", 3, 2, 32, False)
    assert qw.expert_fraction == 2 / 8


def test_split_set_is_one_model(models: dict[str, SynthModel]) -> None:
    sm = models["deepseek2-3shards"]
    assert len(sm.paths) == 3
    m = open_local(sm.path)
    assert len(m.shards) == 3
    assert len(m.tensors) == len(tensor_shapes(sm.spec))
    assert m.file_bytes == sum(p.stat().st_size for p in sm.paths)
    # Each tensor's shard, offset and size agree with what gguf-py reads from that shard.
    for i, p in enumerate(sm.paths):
        for rt in gguf.GGUFReader(p).tensors:
            t = m.tensors[rt.name]
            assert (t.shard, t.offset, t.nbytes) == (i, int(rt.data_offset), int(rt.n_bytes))
    assert m.metadata["split.count"] == 3
    # Same tensors, same bytes as the unsplit model with the same spec.
    whole = write_model(sm.spec, sm.path.parent.parent / "whole" / "whole.gguf")
    assert open_local(whole.path).tensors.total_bytes == m.tensors.total_bytes


def test_shard_names() -> None:
    assert shard_names("/m/x-00001-of-00003.gguf") == [
        "/m/x-00001-of-00003.gguf",
        "/m/x-00002-of-00003.gguf",
        "/m/x-00003-of-00003.gguf",
    ]
    assert shard_names("x.gguf") == ["x.gguf"]
    assert shard_names("https://h/r/resolve/main/Q2/x-00001-of-00002.gguf")[1].endswith("/Q2/x-00002-of-00002.gguf")
    with pytest.raises(GGUFError, match="shard 2 of a split set") as e:
        shard_names("x-00002-of-00003.gguf")
    assert e.value.hint and "x-00001-of-00003.gguf" in e.value.hint


def _copy_set(sm: SynthModel, dest: Path) -> list[Path]:
    dest.mkdir()
    return [Path(shutil.copy(p, dest / p.name)) for p in sm.paths]


def test_missing_shard(models: dict[str, SynthModel], tmp_path: Path) -> None:
    paths = _copy_set(models["deepseek2-3shards"], tmp_path / "set")
    paths[2].unlink()
    with pytest.raises(GGUFError, match="1 of 3 shards missing") as e:
        open_local(paths[0])
    assert "00003-of-00003" in str(e.value)
    assert paths[1].exists()  # nothing else touched


def test_shard_from_another_set(models: dict[str, SynthModel], tmp_path: Path) -> None:
    paths = _copy_set(models["deepseek2-3shards"], tmp_path / "set")
    shutil.copy(paths[2], paths[1])  # shard 3's content under shard 2's name
    with pytest.raises(GGUFError, match="split.no is 2, expected 1"):
        open_local(paths[0])


def test_truncated_shard(models: dict[str, SynthModel], tmp_path: Path) -> None:
    paths = _copy_set(models["deepseek2-3shards"], tmp_path / "set")
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-100])
    with pytest.raises(GGUFError, match="00002-of-00003.gguf: truncated"):
        open_local(paths[0])


def test_mismatched_split_counts(models: dict[str, SynthModel], tmp_path: Path) -> None:
    sm = models["deepseek2-3shards"]
    headers = [read_file_header(p) for p in sm.paths]
    with pytest.raises(GGUFError, match="split.count is 3, but 2 shards"):
        combine(headers[:2])
    other = write_model(SynthSpec(n_layer=5, seed=1), tmp_path / "o" / "o.gguf", shards=2)
    mixed = [headers[0], read_file_header(other.paths[1]), headers[2]]
    with pytest.raises(GGUFError, match="split.count disagrees|split.no"):
        combine(mixed)
    single = read_file_header(models["deepseek2-q8"].path)
    with pytest.raises(GGUFError, match="no split.count key"):
        combine([single, single])
    with pytest.raises(GGUFError, match="no GGUF files"):
        combine([])


def test_not_a_model(tmp_path: Path) -> None:
    p = tmp_path / "plain.gguf"
    w = gguf.GGUFWriter(p, "x")
    w.kv_data[0].clear()  # no general.architecture at all
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(GGUFError, match="no general.architecture"):
        open_local(p)
