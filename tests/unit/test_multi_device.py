"""Several GPUs and other hosts (llama.cpp RPC workers): balance, budgets, -ts/-ot consistency, quant choice."""

from __future__ import annotations

from dataclasses import replace

import pytest

from launcher.catalog.profiles import require_profile
from launcher.catalog.sources import profile_sources
from launcher.errors import UsageError
from launcher.llama.argv import plan_flags
from launcher.machine.spec import MachineSpec, Worker, parse_net, parse_worker_flag
from launcher.model.tensors import TensorSet
from launcher.plan.choose import choose
from launcher.plan.overrides import effective_buffers
from launcher.plan.types import CPU, Plan, Request
from launcher.units import GiB

DS = require_profile("deepseek-v3.1")


def machine(*gpus_gib: float, ram_gib: float, workers: tuple[Worker, ...] = ()):  # type: ignore[no-untyped-def]
    m = MachineSpec.model_validate(
        {"gpus": [{"memory": f"{g}GiB", "name": "RTX 4090"} for g in gpus_gib], "ram": f"{ram_gib}GiB", "cores": 16}
    ).to_machine()
    return replace(m, workers=workers)


def ds(m, quant: str | None = None):  # type: ignore[no-untyped-def]
    return choose(DS.display_name, m, profile_sources(DS), Request(ctx=DS.default_ctx), pinned=quant)


def llama_cpp_view(p: Plan, tensors: TensorSet) -> dict[str, str]:
    """Where llama.cpp puts every tensor given the plan's -ngl, -ts and -ot, derived independently of the planner:
    -ts counts give consecutive layer runs (RPC devices first, then the local GPUs), the last ngl slots offloaded."""
    n_layer = p.n_layer
    devices = [d.name for d in p.remote_devices] + [d.name for d in p.gpu_devices]
    counts = list(p.tensor_split) if p.tensor_split else [p.ngl] * bool(devices)
    slot_dev: dict[int, str] = dict.fromkeys(range(n_layer + 1), CPU)
    slot = n_layer + 1 - p.ngl
    for dev, c in zip(devices, counts, strict=False):
        for il in range(slot, slot + c):
            slot_dev[il] = dev
        slot += c
    default = {}
    for t in tensors.tensors:
        s = t.layer if t.layer is not None else n_layer
        default[t.name] = CPU if t.name == "token_embd.weight" else slot_dev[min(s, n_layer)]
    return effective_buffers([t.name for t in tensors.tensors], p.overrides, default)


def expert_bytes_on(p: Plan, tensors: TensorSet, device: str) -> int:
    return sum(tensors[n].nbytes for n, d in p.placement.items() if d == device and tensors[n].is_expert)


@pytest.mark.parametrize(
    ("gpus", "quant"), [((24, 24), "UD-Q2_K_XL"), ((24, 12), "UD-Q2_K_XL"), ((80, 24, 48), "UD-Q4_K_XL")]
)
def test_several_gpus_balance_by_free_vram_within_budgets(gpus: tuple[int, ...], quant: str) -> None:
    c = ds(machine(*gpus, ram_gib=512), quant)
    p, tensors = c.chosen.plan, c.chosen.source.tensors
    assert p.fits
    assert all(d.used_bytes <= d.budget_bytes for d in p.devices)
    # -ts and -ot say exactly what the plan says, as llama.cpp reads them.
    assert llama_cpp_view(p, tensors) == p.placement
    assert p.tensor_split == tuple(len(p.gpu_layers[d.name]) for d in p.gpu_devices)
    # Expert bytes per GPU in proportion to what each has free after its own layers' non-expert part.
    shares = [expert_bytes_on(p, tensors, d.name) for d in p.gpu_devices]
    room = [d.budget_bytes - (d.used_bytes - expert_bytes_on(p, tensors, d.name)) for d in p.gpu_devices]
    assert all(s > 0 for s in shares)
    for s, r in zip(shares, room, strict=True):
        assert s <= r  # within budget
        assert r - s < 8 * GiB  # each GPU filled up to about one expert layer (~7.5 GiB at Q4, less below)
    # Not GPU0 first: the smallest GPU holds experts too, and every GPU has its own layers.
    assert all(p.gpu_layers[d.name] for d in p.gpu_devices)
    text = "\n".join(p.reasons)
    for d in p.gpu_devices:
        assert f"{d.name}: layers " in text


def test_24_and_12_gib_split_two_to_one() -> None:
    c = ds(machine(24, 12, ram_gib=512), "UD-Q2_K_XL")
    p, tensors = c.chosen.plan, c.chosen.source.tensors
    big, small = (expert_bytes_on(p, tensors, d.name) for d in p.gpu_devices)
    assert 1.5 < big / small < 3.5  # budgets 22.5 : 10.5 GiB, less each one's layers' attention and KV
    assert len(p.gpu_layers["CUDA0"]) > len(p.gpu_layers["CUDA1"])


def test_worker_flag_parsing() -> None:
    w = parse_worker_flag("ram=256GiB,gpu=24GiB,net=10Gbit,at=10.0.0.2:50053", 1)
    assert w.endpoint == "10.0.0.2:50053" and w.described
    assert [(d.index, d.kind, d.total_bytes) for d in w.devices] == [(0, "gpu", 24 * GiB), (1, "cpu", 256 * GiB)]
    assert w.net_bytes_s == 1.25e9
    assert parse_worker_flag("ram=64GiB", 2).endpoint == "worker2:50052"
    assert parse_net("100Mbit") == 12.5e6
    for bad in ("ram=64", "cpu=4", "net=10Gbit", "ram=64GiB,at=host:port"):
        with pytest.raises(UsageError):
            parse_worker_flag(bad, 1)


def test_a_worker_with_ram_lets_a_bigger_quant_fit() -> None:
    alone = ds(machine(24, ram_gib=256))
    w = parse_worker_flag("ram=256GiB", 1)
    both = ds(machine(24, ram_gib=256, workers=(w,)))
    sizes = {c.source.name: c.source.size_bytes for c in both.candidates}
    assert sizes[both.chosen.source.name] > sizes[alone.chosen.source.name]
    p = both.chosen.plan
    assert p.fits and p.rpc == ("worker1:50052",)
    rpc = "RPC0[worker1:50052]"
    assert p.expert_layers[rpc] and rpc in {o.buffer for o in p.overrides}
    # Every byte that fits here stays here: the worker only takes what this host's RAM cannot.
    assert p.cpu.free_bytes < 8 * GiB
    assert llama_cpp_view(p, both.chosen.source.tensors) == p.placement
    flags = plan_flags(p)
    assert flags.index("--rpc") < flags.index("-ot")  # llama.cpp resolves -ot buffers when it reads the flag
    assert flags[flags.index("--rpc") + 1] == "worker1:50052"
    assert flags[flags.index("-ts") + 1] == "0,62"  # the worker's device first, with no layers
    # The network is in the speed: the same placement with a free network would be faster.
    assert p.predicted_tg_tps < alone.chosen.plan.predicted_tg_tps
    assert any("network (assumed)" in r for r in p.reasons)


def test_worker_gpu_is_used_before_its_ram_and_local_gpus_first() -> None:
    w = parse_worker_flag("ram=256GiB,gpu=24GiB,net=10Gbit", 1)
    c = ds(machine(48, ram_gib=64, workers=(w,)), "UD-Q2_K_XL")
    p = c.chosen.plan
    assert p.fits
    gpu, ram = "RPC0[worker1:50052]", "RPC1[worker1:50052]"
    assert p.expert_layers["CUDA0"] and p.expert_layers[gpu] and p.expert_layers[ram]
    by_name = {d.name: d for d in p.devices}
    assert by_name[gpu].free_bytes < 8 * GiB  # the remote GPU filled before the remote RAM took the rest
    assert p.tensor_split == (0, 0, 62)
    assert all(d.used_bytes <= d.budget_bytes for d in p.devices)


def test_no_workers_no_rpc_flags() -> None:
    p = ds(machine(24, ram_gib=256)).chosen.plan
    assert p.rpc == () and "--rpc" not in plan_flags(p) and "-ts" not in plan_flags(p)


def test_cli_plan_with_a_described_worker_picks_a_bigger_quant(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from launcher.cli.main import main

    quants = []
    for extra in ([], ["--worker", "ram=256GiB"]):
        code = main(["plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--estimate", "--json", *extra])
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        sizes = {c["quant"]: c["size_bytes"] for c in out["candidates"]}
        quants.append((sizes[out["quant"]], out))
    (alone, _), (with_worker, p) = quants
    assert with_worker > alone
    assert p["rpc"] == ["worker1:50052"] and "--rpc" in p["argv"]
    assert any(d["remote"] and d["weights_bytes"] > 0 for d in p["devices"])
    assert main(["plan", "deepseek-v3.1", "--estimate", "--worker", "ram=lots"]) == 2
    assert "Error: cannot read worker RAM 'lots'" in capsys.readouterr().err


def test_no_gpu_here_puts_the_layers_on_the_workers_gpus() -> None:
    w = parse_worker_flag("ram=128GiB,gpu=2x48GiB,net=10Gbit", 1)
    c = ds(machine(ram_gib=128, workers=(w,)), "UD-Q2_K_XL")
    p, tensors = c.chosen.plan, c.chosen.source.tensors
    assert p.fits and p.ngl == 62
    g0, g1, ram = (f"RPC{i}[worker1:50052]" for i in range(3))
    assert p.tensor_split == (len(p.gpu_layers[g0]), len(p.gpu_layers[g1]), 0) and sum(p.tensor_split) == 62
    by_name = {d.name: d for d in p.devices}
    assert by_name[g0].kv_bytes > 0 and by_name[g1].kv_bytes > 0 and by_name[ram].kv_bytes == 0
    assert all(d.used_bytes <= d.budget_bytes for d in p.devices)
    assert llama_cpp_view(p, tensors) == p.placement  # -ts over the RPC devices, -ot for the rest
    assert any("the layers run on the workers' GPUs" in r for r in p.reasons)
    # The same machine with the worker's GPUs unknown (RAM only) keeps the layers on this CPU: slower.
    ram_only = ds(machine(ram_gib=128, workers=(parse_worker_flag("ram=224GiB", 1),)), "UD-Q2_K_XL").chosen.plan
    assert ram_only.ngl == 0 and ram_only.predicted_tg_tps < p.predicted_tg_tps


def test_your_own_ot_may_name_a_workers_buffer(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from launcher.cli.main import main

    pin = r"blk\.3\.ffn_(?:down|gate|up)_exps\.=RPC0[worker1:50052]"
    argv = ["plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--estimate", "--json", "--ot", pin]
    assert main([*argv, "--worker", "ram=256GiB"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["overrides"][0] == pin and p["argv"].index("--rpc") < p["argv"].index("-ot")
    assert main(argv) == 2  # no such buffer without the worker
    assert "RPC0[worker1:50052]" in capsys.readouterr().err
