"""Other hosts over llama.cpp's RPC backend: what each `runq worker` lends, asked through llama.cpp itself.

Edge: opens a TCP connection first (so an unreachable worker is named in seconds), then runs
`llama-server --rpc HOST:PORT --list-devices`, which connects as llama.cpp will and prints
`RPC0: 127.0.0.1:50052 (24016 MiB, 23000 MiB free)` for each device the worker exposes.
`--worker ram=…` descriptions (hosts you may not have) are parsed in machine.py and need no network.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from launcher.errors import ExternalToolError, RunqError, UsageError, WorkerUnreachable
from launcher.llama import procs
from launcher.machine.spec import Machine, RemoteDevice, Worker, parse_endpoint, parse_worker_flag
from launcher.units import MiB

_DEVICE_RE = re.compile(r"^\s*RPC(\d+):\s*(\S+)\s+\((\d+) MiB, (\d+) MiB free\)")
CONNECT_TIMEOUT_S = 3.0
LIST_TIMEOUT_S = 20.0
KIND_NOTE = (
    "llama.cpp does not say whether a worker's device is a GPU or its CPU: planned at RAM speed "
    "(say --worker gpu=… to plan a GPU's speed)"
)


def parse_list_devices(text: str) -> list[tuple[int, int, int]]:
    """(RPC index, total bytes, free bytes) for each RPC device in `--list-devices` output."""
    out = []
    for line in text.splitlines():
        if m := _DEVICE_RE.match(line):
            out.append((int(m.group(1)), int(m.group(3)) * MiB, int(m.group(4)) * MiB))
    return out


def reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection opens; else why not, in words."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:.0f} s"
    except OSError as e:
        return e.strerror or str(e)


def probe(endpoint: str, server_binary: Path) -> Worker:
    """Ask one worker its devices and their free memory. Raises WorkerUnreachable naming it."""
    why = reachable(endpoint)
    if why:
        raise WorkerUnreachable(
            f"worker {endpoint} is unreachable: {why}",
            hint=f"start it there with `runq worker --host ADDRESS --port {endpoint.rpartition(':')[2]}`, "
            "check the firewall, or leave it out of --rpc",
        )
    try:
        r = procs.run([str(server_binary), "--rpc", endpoint, "--list-devices"], capture_output=True, text=True,
                      timeout=LIST_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise WorkerUnreachable(
            f"worker {endpoint} accepted the connection but did not answer within {LIST_TIMEOUT_S:.0f} s",
            hint="a worker serves one llama.cpp at a time: is another main host using it? Is it a runq worker?",
        ) from None
    except OSError as e:
        raise ExternalToolError(f"{server_binary}: cannot run: {e.strerror}") from None
    found = parse_list_devices(r.stdout + r.stderr)
    if r.returncode != 0 or not found:
        tail = " ".join((r.stdout + r.stderr).strip().splitlines()[-2:])
        raise WorkerUnreachable(
            f"worker {endpoint} did not list its devices through llama.cpp (status {r.returncode}): {tail}",
            hint="is it a `runq worker` (ggml-rpc-server) of the same llama.cpp commit?",
        )
    devices = tuple(RemoteDevice(i, "cpu", total, free) for i, (_, total, free) in enumerate(found))
    return Worker(endpoint, devices, note=KIND_NOTE)


def annotate(asked: Worker, described: Worker) -> Worker:
    """An asked worker with what its --worker description says that llama.cpp cannot: which device is a GPU,
    bandwidths, the link speed. Free memory stays what the worker reported."""
    if len(described.devices) != len(asked.devices):
        raise UsageError(
            f"--worker at={asked.endpoint} describes {len(described.devices)} devices, the worker lends "
            f"{len(asked.devices)}",
            hint="describe each device it lends (gpu=… for each GPU, ram=… for its CPU), in its order",
        )
    devices = tuple(
        replace(d, kind=desc.kind, bandwidth_bytes_s=desc.bandwidth_bytes_s)
        for d, desc in zip(asked.devices, described.devices, strict=True)
    )
    return replace(asked, devices=devices, net_bytes_s=described.net_bytes_s, note=None)


def rpc_capable_server(llama_bin: str | None) -> Path:
    """A llama-server built with RPC (runq's builds since -DGGML_RPC=ON: the ones with ggml-rpc-server)."""
    from launcher.llama import build as bld
    from launcher.llama import build_config as bc

    if llama_bin:
        return Path(llama_bin) / "llama-server"
    for b in bld.cached_builds():
        if b.manifest.get("commit") == bc.LLAMA_CPP_COMMIT and (b.bin_dir / bc.RPC_SERVER).is_file():
            return b.bin_dir / "llama-server"
    raise ExternalToolError(
        "asking the workers needs a llama.cpp build with RPC, and there is none yet",
        hint="run `runq build` (or plan for hosts you describe with --worker ram=256GiB)",
    )


def attach(machine: Machine, args: Any) -> Machine:
    """The machine with its workers: described ones (--worker) and asked ones (--rpc). An unreachable worker
    is named and left out; the plan is made without it."""
    endpoints: list[str] = []
    for text in getattr(args, "rpc", None) or []:
        endpoints += [parse_endpoint(e) for e in text.split(",") if e.strip()]
    if len(set(endpoints)) != len(endpoints):
        raise UsageError("--rpc names the same worker twice", hint="list each host:port once")
    described = [parse_worker_flag(text, i) for i, text in enumerate(getattr(args, "worker", None) or [], start=1)]
    about = {w.endpoint: w for w in described if w.endpoint in endpoints}  # --worker at=… says what --rpc can't
    workers = [w for w in described if w.endpoint not in about]
    left_out: list[str] = []
    if endpoints:
        server = rpc_capable_server(getattr(args, "llama_bin", None))
        for ep in endpoints:
            try:
                asked = probe(ep, server)
                workers.append(annotate(asked, about[ep]) if ep in about else asked)
            except WorkerUnreachable as e:
                print(f"Warning: {e.message}: planning without it", file=sys.stderr)
                print(f"Hint: {e.hint}", file=sys.stderr)
                left_out.append(f"planned without worker {ep}: it is unreachable")  # the plan says it too
    if not workers and not left_out:
        return machine
    return replace(machine, workers=tuple(workers), notes=(*machine.notes, *left_out))


def name_dead(error: RunqError, endpoints: tuple[str, ...]) -> RunqError:
    """llama-server failed with workers in its plan: say which of them no longer answer."""
    if not endpoints:
        return error
    dead = [ep for ep in endpoints if reachable(ep, timeout=2.0)]
    if not dead and getattr(error, "kind", None) != "rpc":
        return error
    who = ", ".join(dead) if dead else ", ".join(endpoints)
    state = "stopped answering" if dead else "failed (llama.cpp lost its connection)"
    error.message = f"worker {who} {state}: {error.message}"
    error.hint = (
        f"restart `runq worker` on {who} and run again, or leave it out of --rpc (runq re-plans without it)"
        + (f"; {error.hint}" if error.hint else "")
    )
    return error


# --- what a worker runs -------------------------------------------------------------------------------


def exposure_warning(host: str, port: int) -> str:
    return (
        f"Warning: listening on {host}:{port}, beyond this machine. llama.cpp's RPC protocol has no "
        "authentication and no encryption: anyone who can reach this port can allocate memory on the devices "
        "listed below, read and write it, and run computations on them.\n"
        "  Let only the main host in: a firewall rule (e.g. `ufw allow from MAIN_HOST_IP to any port "
        f"{port} proto tcp`, and deny the rest), a VPN (WireGuard, Tailscale), or keep the default "
        f"--host 127.0.0.1 and tunnel: on the main host `ssh -N -L {port}:127.0.0.1:{port} THIS_HOST`, "
        f"then --rpc 127.0.0.1:{port}."
    )


def worker_argv(server: Path, host: str, port: int, threads: int, cache: bool, devices: list[str]) -> list[str]:
    argv = [str(server), "--host", host, "--port", str(port), "--threads", str(threads)]
    if cache:
        argv.append("--cache")
    if devices:
        argv += ["--device", ",".join(devices)]
    return argv


def default_devices(gpu_count: int, backend: str | None) -> list[str]:
    """With GPUs (and a CUDA build): every GPU and the CPU, so the RAM is lent too; ggml-rpc-server alone would
    lend only the GPUs. Without: nothing to name (it lends its CPU device)."""
    if gpu_count and backend == "cuda":
        return [f"CUDA{i}" for i in range(gpu_count)] + ["CPU"]
    return []
