"""`runq service …`: a model as a systemd service that starts at boot, on the GPU, and comes back after a crash.

CLI layer (prints, exits). The unit text comes from service_unit (pure), the
files and systemctl from service (edge), the plan from the same code as `runq run`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.cli.common import confirm, ensure_binaries, ensure_model, plan_for, read_api_key, server_options, warn
from launcher.errors import EXIT_OK, RunqError, UsageError

if TYPE_CHECKING:
    from launcher.service.manage import Mode, Record, SavedPlan

UNIT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")


def _name_for(model: str) -> str:
    stem = Path(model).name.removesuffix(".gguf") if model.endswith(".gguf") else model
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem.lower()).strip("-.")
    return clean[:48] or "model"


def check_service_name(name: str) -> str:
    """A name that makes a valid systemd unit name, runq-NAME.service, and a plain file name for its record."""
    if not UNIT_NAME_RE.fullmatch(name) or name.endswith("."):
        raise UsageError(
            f"--name {name[:80]!r}: not a service name systemd accepts",
            hint="1-63 letters, digits, '-', '_', '.' or ':', starting with a letter or digit (e.g. deepseek-v3)",
        )
    return name


def _run_as(mode: str, run_as: str | None) -> str | None:
    """The user a system unit runs as: --run-as, else the user behind sudo; never root, and one that exists."""
    if mode != "system":
        if run_as:
            raise UsageError("--run-as applies to system units only",
                             hint="add --system (as root), or leave --run-as out: a user unit runs as you")  # fmt: skip
        return None
    user = run_as or os.environ.get("SUDO_USER")
    if not user:
        raise UsageError("a system unit needs a user to run as", hint="add --run-as USER (a dedicated user is best)")
    if user == "root":
        raise UsageError("the service would run as root", hint="add --run-as USER with an unprivileged user")
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"--run-as {user}: no such user on this machine",
                         hint=f"create it first (e.g. useradd --system {user}), or name another") from None  # fmt: skip
    return str(user)


@dataclass(frozen=True)
class Prepared:
    record: Any  # service.Record
    spec: Any  # service_unit.UnitSpec
    text: str
    warnings: tuple[str, ...]


def _prepare(args: argparse.Namespace, *, act: bool) -> Prepared:
    """The record, unit and its text for the command's model and options; downloads/builds only when `act`."""
    from launcher.pipeline.plan import command
    from launcher.service.manage import Locations, check_port

    name = check_service_name(args.name) if args.name is not None else _name_for(args.model)
    loc = Locations.for_mode(args.mode)
    run_as = _run_as(args.mode, args.run_as)
    opts = server_options(args)
    read_api_key(opts)
    check_port(loc, name, opts.port)
    p, _ = plan_for(args, server=True)
    dry = not act  # a service makes sure its model and build exist, asking once
    model_path = ensure_model(p.target, p.quant, auto=True, yes=getattr(args, "yes", False), dry=dry)
    quirks = tuple(p.target.profile.build_quirks) if p.target.profile else ()
    binaries = Path(ensure_binaries(args.llama_bin, args.source, allowed=True, dry=dry, quirks=quirks)).absolute()
    warnings = _build_warnings(p.plan, binaries)
    log_path = loc.log_path(name)
    argv = command(p, server=opts, model=str(Path(model_path).absolute()), bin_dir=binaries,
                   extra=["--log-file", str(log_path)])  # fmt: skip
    template = p.target.profile.template_path() if p.target.profile else None
    reads = (argv[0], str(Path(model_path).absolute()), *([str(template)] if template else []))
    return _unit(args.mode, name, run_as, p.target, p.choice, opts, argv, str(log_path), reads, warnings)


def _build_warnings(plan: Any, binaries: Path) -> tuple[str, ...]:
    """A plan with GPU layers pointed at a build without CUDA would run many times slower: say so."""
    from launcher.llama.binaries import binaries_at

    backend = binaries_at(binaries).backend
    if not plan.gpu_devices or backend in ("cuda", None):
        return ()
    return (
        f"the plan puts layers on the GPU but {binaries} is a {backend} build of llama.cpp: the service would run "
        "everything on the CPU (`runq build --backend cuda` on the GPU machine)",
    )


def _unit(mode: Mode, name: str, run_as: str | None, target: Any, choice: Any, opts: Any, argv: list[str],
          log_path: str, reads: tuple[str, ...], warnings: tuple[str, ...]) -> Prepared:  # fmt: skip
    from launcher.model.shards import shard_names
    from launcher.service.manage import Record, SavedPlan
    from launcher.service.unit import UnitSpec, private_tmp_paths, private_tmp_warning, render
    from launcher.view import plan as render_plan

    plan = choice.chosen.plan
    quant = choice.chosen.source.name
    gpus = [(int(d.name.removeprefix("CUDA")), d.used_bytes + d.margin_bytes) for d in plan.gpu_devices]
    workers = [(d.name.split("[", 1)[1].rstrip("]"), int(d.name[3 : d.name.index("[")]), d.used_bytes + d.margin_bytes)
               for d in plan.remote_devices if d.weights_bytes]  # fmt: skip
    record = Record(
        name=name, mode=mode, model=target.key, quant=quant, host=opts.host, port=opts.port, argv=argv,
        log_path=log_path, gpus=gpus, plan=SavedPlan.model_validate(render_plan.plan_json(plan)),
        api_key_file=opts.api_key_file,
    )  # fmt: skip
    key = [opts.api_key_file] if opts.api_key_file else []
    read_paths = (*reads, sys.executable, *key)
    # Bound in when under /tmp: the build's directory (its libraries too), every shard, the template, the key, runq.
    binary, model, *template = reads
    binds = private_tmp_paths([str(Path(binary).parent), *shard_names(model), *template, *key, *runq_paths()])
    spec = UnitSpec(
        name=name, description=f"runq: {target.name} {quant} on {opts.host}:{opts.port}", exec_start=argv,
        runq=[sys.executable, "-m", "launcher"], mode=mode, run_as=run_as, gpus=tuple(gpus), state_dir=f"runq/{name}",
        read_paths=read_paths, mlock="mlock" in plan.load_mode, workers=tuple(workers), binds=binds,
        write_paths=(str(Path(log_path).parent),) if mode == "user" else (),
    )  # fmt: skip
    tmp = private_tmp_warning(binds)
    return Prepared(record, spec, render(spec), (*warnings, *([tmp] if tmp else [])))


def runq_paths() -> list[str]:
    """Where runq itself lives, for the unit's ExecStartPre/Post: its Python environment and its package."""
    import launcher

    return [sys.prefix, str(Path(launcher.__file__).resolve().parent.parent)]


def cmd_render(args: argparse.Namespace) -> int:
    prepared = _prepare(args, act=False)
    for w in prepared.warnings:
        warn(w)
    sys.stdout.write(prepared.text)
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    from launcher.llama.argv import shell_quote
    from launcher.service import manage as service
    from launcher.service.unit import unit_name

    if args.mode == "system" and os.geteuid() != 0 and not os.environ.get("RUNQ_UNIT_DIR"):
        raise UsageError("a system unit needs root", hint="sudo runq service install … --system, or use --user")
    if args.all:
        from launcher.cli.service_router import cmd_install_router

        name = check_service_name(args.name or "router")
        return cmd_install_router(args, name, _run_as(args.mode, args.run_as), runq_paths())
    if args.model is None:
        raise UsageError("which model?", hint="runq service install MODEL, or --all for every model on disk")
    prepared = _prepare(args, act=not args.dry_run)
    record, text = prepared.record, prepared.text
    for w in prepared.warnings:
        warn(w)
    loc = service.Locations.for_mode(args.mode)
    if args.dry_run:
        print(f"# {loc.unit_path(record.name)}")
        sys.stdout.write(text)
        print(f"\n# {loc.record_path(record.name)}: the plan it runs")
        p = _saved_plan(record)
        print(f"#   {record.quant}, ctx {p.ctx:,}, {p.predicted_tg_tps} tokens/s predicted")
        print(f"#   {shell_quote(record.argv)}")
        return EXIT_OK
    write_unit = service.check_unit_slot(loc, record.name, text, args.force)
    systemd = service.Systemd(args.mode)
    systemd.check()
    if not confirm(f"Install and start {unit_name(record.name)} ({record.mode} unit)?", args.yes):
        return 1
    service.write_atomic(loc.record_path(record.name), record.to_json())
    if write_unit:
        service.write_atomic(loc.unit_path(record.name), text)
    if record.mode == "user":  # the unit's ReadWritePaths= (a system unit's StateDirectory= is that directory)
        Path(record.log_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    systemd.systemctl("daemon-reload")
    print(f"Starting {unit_name(record.name)} (waits until the model is loaded and its placement verified)…")
    t0 = time.monotonic()
    systemd.systemctl("enable", "--now", unit_name(record.name))
    print(f"Running: http://{record.host}:{record.port} (ready in {time.monotonic() - t0:.0f} s)")
    print(f"  unit: {loc.unit_path(record.name)}")
    print(f"  plan: {loc.record_path(record.name)}")
    print(f"  logs: runq service logs {record.name}")
    if args.mode == "user":
        print(f"Hint: to start it at boot without logging in: loginctl enable-linger {os.environ.get('USER', '$USER')}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from launcher.service import manage as service
    from launcher.service.unit import unit_name

    loc = service.Locations.for_mode(args.mode)
    recs = service.records(loc)
    if not recs:
        print(f"No runq {args.mode} services. `runq service install MODEL` makes one.")
        return EXIT_OK
    systemd = service.Systemd(args.mode)
    for r in recs:
        state = systemd.show(unit_name(r.name)).get("ActiveState", "unknown")
        print(f"{r.name:<24} {state:<10} {r.model} {r.quant}  http://{r.host}:{r.port}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from launcher.llama import log as llama_log
    from launcher.llama.server import base_url, http_json
    from launcher.service import manage as service
    from launcher.service.unit import unit_name

    loc = service.Locations.for_mode(args.mode)
    r = service.Record.load(loc.record_path(check_service_name(args.name)))
    state = service.Systemd(args.mode).show(unit_name(r.name))
    print(f"{unit_name(r.name)}: {state.get('ActiveState', '?')} ({state.get('SubState', '?')}), "
          f"pid {state.get('MainPID', '?')}, restarts {state.get('NRestarts', '?')}")  # fmt: skip
    if r.kind == "worker":
        print(f"  worker: ggml-rpc-server on {r.host}:{r.port} (main hosts add --rpc {r.host}:{r.port})")
        return EXIT_OK
    if r.kind == "router":
        from launcher.cli.service_router import router_status

        return router_status(r)
    plan = _saved_plan(r)
    print(f"  model: {r.model} {r.quant}, ctx {plan.ctx:,}, {plan.predicted_tg_tps} tokens/s predicted")
    key = Path(r.api_key_file).read_text().strip() if r.api_key_file else None
    url = base_url(r.host, r.port)
    try:
        health = http_json(url, "/health", key, timeout=3).get("status", "?")
    except OSError as e:
        health = f"not answering ({getattr(e, 'reason', e)})"
    print(f"  health: {health} at {url}")
    report = llama_log.parse(_read(r.log_path))
    if report.buffers:
        # The same check as `runq run` and the unit's ExecStartPost: the saved plan against llama.cpp's buffers.
        check = llama_log.verify(plan.view, report, has_gpu=bool(r.gpus))
        print("  memory per device, predicted and as llama.cpp reported it:")
        for line in check.lines:
            print(f"    {line}")
        for problem in check.problems:
            print(f"  problem: {problem}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from launcher.service import manage as service
    from launcher.service.unit import unit_name

    loc = service.Locations.for_mode(args.mode)
    service.Record.load(loc.record_path(check_service_name(args.name)))  # a clear error for an unknown name
    argv = service.Systemd(args.mode).journal_argv(unit_name(args.name), args.follow)
    from launcher.llama import procs

    try:
        return procs.run(argv).returncode
    except FileNotFoundError:
        raise RunqError(f"{argv[0]} not found", hint=f"the server's own log is {loc.log_path(args.name)}") from None


def cmd_restart(args: argparse.Namespace) -> int:
    from launcher.service import manage as service
    from launcher.service.unit import unit_name

    loc = service.Locations.for_mode(args.mode)
    service.Record.load(loc.record_path(check_service_name(args.name)))
    service.Systemd(args.mode).systemctl("restart", unit_name(args.name))
    print(f"Restarted {unit_name(args.name)}.")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from launcher.service import manage as service

    loc = service.Locations.for_mode(args.mode)
    gone = service.remove(loc, check_service_name(args.name), service.Systemd(args.mode))
    print(f"Removed the service {args.name!r}: " + ", ".join(gone))
    print("The model files and the llama.cpp build are kept.")
    return EXIT_OK


def cmd_wait_gpu(args: argparse.Namespace) -> int:
    """ExecStartPre: wait until every planned GPU is visible with enough free memory (the driver may be late)."""
    from launcher.machine.probe import probe_gpus

    wanted = []
    for item in args.gpu_free:
        index, _, need = item.partition(":")
        wanted.append((int(index), int(need)))
    t0 = time.monotonic()
    while True:
        gpus, _, _, note = probe_gpus()
        by_index = {g.index: g for g in gpus}
        missing = [f"GPU {i} ({'absent' if i not in by_index else f'{by_index[i].free_bytes >> 20} MiB free'})"
                   for i, need in wanted if i not in by_index or by_index[i].free_bytes < need]  # fmt: skip
        if not missing:
            print(f"GPUs ready after {time.monotonic() - t0:.0f} s", flush=True)
            return EXIT_OK
        if time.monotonic() - t0 > args.timeout:
            print(f"Error: after {args.timeout:.0f} s still not ready: {', '.join(missing)}"
                  + (f" ({note})" if note else ""), file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(2)


def cmd_verify(args: argparse.Namespace) -> int:
    """ExecStartPost: wait until the server answers, then check llama.cpp's placement against the saved plan."""
    from launcher.llama import log as llama_log
    from launcher.llama.server import base_url, http_json
    from launcher.service import manage as service

    loc = service.Locations.for_mode(args.mode)
    r = service.Record.load(loc.record_path(check_service_name(args.name)))
    if r.kind == "router":
        from launcher.cli.service_router import verify_router

        return verify_router(r, args.timeout)
    key = Path(r.api_key_file).read_text().strip() if r.api_key_file else None
    url = base_url(r.host, r.port)
    t0 = time.monotonic()
    while True:
        try:
            if http_json(url, "/health", key, timeout=3).get("status") == "ok":
                break
        except (OSError, ValueError):
            pass
        if time.monotonic() - t0 > args.timeout:
            print(f"Error: {args.name} did not answer within {args.timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(1)
    report = llama_log.parse(_read(r.log_path))
    check = llama_log.verify(_saved_plan(r).view, report, has_gpu=bool(r.gpus))  # the same check as `runq run`
    for line in check.lines:
        print(f"  {line}")
    if not check.ok:
        for problem in check.problems:
            print(f"Error: {problem}: failing the start instead of serving many times slower", file=sys.stderr)
        return 1
    on_gpu = [n for n, b in report.buffers.items() if n.startswith("CUDA") and b.get("weights", 0) > 0]
    print(f"{args.name}: ready after {time.monotonic() - t0:.0f} s; weights on {', '.join(on_gpu) or 'the CPU'} "
          f"as planned", flush=True)  # fmt: skip
    return EXIT_OK


def _saved_plan(r: Record) -> SavedPlan:
    if r.plan is None:
        raise RunqError(f"{r.name} is a worker service: it has no model plan", hint=f"runq service status {r.name}")
    return r.plan


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cmd_install_worker(args: argparse.Namespace) -> int:
    """`runq worker` as a systemd unit: the resolved ggml-rpc-server command, sandboxed like the model services."""
    from launcher.cli.common import confirm, rpc_server_binary
    from launcher.cli.worker import public
    from launcher.llama.rpc import default_devices, exposure_warning, worker_argv
    from launcher.machine.probe import probe_gpus
    from launcher.plan.inputs import check_port, is_loopback
    from launcher.service import manage as service
    from launcher.service.unit import private_tmp_warning, render, unit_name, worker_unit_spec

    if args.mode == "system" and os.geteuid() != 0 and not os.environ.get("RUNQ_UNIT_DIR"):
        raise UsageError("a system unit needs root", hint="sudo runq service install-worker … --system, or --user")
    check_port(args.port)
    name = check_service_name(args.name or f"worker-{args.port}")
    loc = service.Locations.for_mode(args.mode)
    run_as = _run_as(args.mode, args.run_as)
    service.check_port(loc, name, args.port)
    server, backend = rpc_server_binary(args.llama_bin, args.source, yes=args.yes)
    devices = [d for text in args.device or [] for d in text.split(",") if d]
    devices = devices or default_devices(len(probe_gpus()[0]), backend)
    threads = args.threads or os.cpu_count() or 1
    argv = worker_argv(server.absolute(), args.host, args.port, threads, args.cache, devices)
    n_gpus = sum(1 for d in devices if d.startswith("CUDA"))
    spec = worker_unit_spec(name, argv, args.mode, run_as, n_gpus, [sys.executable, "-m", "launcher"], runq_paths())
    text = render(spec)
    if not is_loopback(args.host):
        print(exposure_warning(args.host, args.port), file=sys.stderr)
    if tmp := private_tmp_warning(spec.binds):
        warn(tmp)
    if args.dry_run:
        print(f"# {loc.unit_path(name)}")
        sys.stdout.write(text)
        return EXIT_OK
    write_unit = service.check_unit_slot(loc, name, text, args.force)
    systemd = service.Systemd(args.mode)
    systemd.check()
    if not confirm(f"Install and start {unit_name(name)} ({args.mode} unit)?", args.yes):
        return 1
    record = service.Record(
        name=name, mode=args.mode, model="(worker)", quant="", host=args.host, port=args.port, argv=argv,
        log_path="", gpus=[(i, 1) for i in range(n_gpus)], kind="worker",
    )  # fmt: skip
    service.write_atomic(loc.record_path(name), record.to_json())
    if write_unit:
        service.write_atomic(loc.unit_path(name), text)
    systemd.systemctl("daemon-reload")
    systemd.systemctl("enable", "--now", unit_name(name))
    print(f"Running: {unit_name(name)}, llama.cpp RPC on {args.host}:{args.port}")
    print(f"  unit: {loc.unit_path(name)}")
    print(f"  on the main host: runq plan MODEL --rpc {public(args.host)}:{args.port}")
    return EXIT_OK
