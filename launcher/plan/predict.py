"""Decode speed predicted from the bytes each device reads per token (and this machine's measured constants).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from launcher.machine.speed import SpeedModel
from launcher.model.hparams import HParams
from launcher.model.tensors import INPUT_SIDE_ROLES, TensorSet
from launcher.plan import memory as mem
from launcher.plan.work import Work


def predict(w: Work) -> float:
    gpu_bw = {g.name: g.bandwidth / mem.GPU_BANDWIDTH_EFFICIENCY for g in w.gpus}
    other = {d.name: d.bandwidth for d in w.remotes}
    net = {d.name: d.net_s for d in w.remotes}
    own = {d.name: tuple(d.layers) for d in w.remotes if d.layers}
    return predict_tg(
        w.tensors, w.hp, w.placement, gpu_bw, w.threads, w.machine.ram_bandwidth_bytes_s,
        other_bandwidth=other, net_s_per_layer=net, layer_runs=own, speed=w.machine.speed,
    )  # fmt: skip


def predict_tg(
    tensors: TensorSet,
    hp: HParams,
    placement: dict[str, str],
    gpu_bandwidth: Mapping[str, float],
    threads: int,
    ram_bandwidth: float | None,
    *,
    other_bandwidth: Mapping[str, float] | None = None,
    net_s_per_layer: Mapping[str, float] | None = None,
    layer_runs: Mapping[str, tuple[int | None, ...]] | None = None,
    speed: SpeedModel | None = None,
) -> float:
    """Decode tokens/s: bytes read per token on each device over its effective bandwidth, plus a per-layer cost,
    plus the network for every layer with tensors on a worker, and once for a worker's own run of layers
    (`gpu_bandwidth` is peak, `other_bandwidth` effective, e.g. a worker's RAM). With a SpeedModel (this machine,
    measured: `runq calibrate`), its CPU bandwidth and per-layer cost, and its GPU bandwidths where it has them."""
    per_device = bytes_per_token(tensors, hp, placement)
    bw = {name: peak * mem.GPU_BANDWIDTH_EFFICIENCY for name, peak in gpu_bandwidth.items()}
    if speed is None:
        layer_s, cpu_bw = mem.PER_LAYER_OVERHEAD_S, mem.cpu_bandwidth(threads, ram_bandwidth)
    else:
        cpu = speed.cpu_at(threads)
        on_gpu = any(n and dev in gpu_bandwidth for dev, n in per_device.items())
        layer_s = (speed.gpu_layer_s or mem.PER_LAYER_OVERHEAD_S) if on_gpu else cpu.layer_s
        cpu_bw = cpu.bandwidth
        bw.update(speed.gpu_bandwidth)
    bw.update(other_bandwidth or {})
    seconds = hp.n_layer * layer_s
    for dev, nbytes in per_device.items():
        seconds += nbytes / bw.get(dev, cpu_bw)
    net = net_s_per_layer or {}
    if net:
        on: dict[int | None, set[str]] = {}
        for name, d in placement.items():
            on.setdefault(tensors[name].layer, set()).add(d)
        # A layer split between devices crosses the network to and from each worker holding part of it;
        # a worker's own run of whole layers costs one crossing in all.
        for layer, devs in on.items():
            if layer is not None and len(devs) > 1:
                seconds += sum(net.get(d, 0.0) for d in devs)
        seconds += sum(net[d] for d in (layer_runs or {}) if d in net)
    return 1.0 / seconds if seconds > 0 else 0.0


def bytes_per_token(tensors: TensorSet, hp: HParams, placement: dict[str, str]) -> dict[str, int]:
    """Weight bytes each device reads per generated token: routed experts in proportion used/total,
    the token embedding not at all (one row), everything else whole."""
    out: dict[str, float] = {}
    frac = hp.expert_fraction or 1.0
    for t in tensors.tensors:
        if t.role in INPUT_SIDE_ROLES:
            continue
        dev = placement[t.name]
        out[dev] = out.get(dev, 0.0) + t.nbytes * (frac if t.is_expert else 1.0)
    return {k: int(v) for k, v in out.items()}
