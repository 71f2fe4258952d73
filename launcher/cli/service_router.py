"""`runq service install --all`: the router of `runq serve` as a systemd unit — every complete model on disk behind
one address, each with its own plan, loaded on demand — with the sandbox, GPU wait and verification of the model
units. Running the same command again after models were added (or removed) plans them all again, rewrites the
preset and restarts the unit, which verifies again.

CLI layer, called by cli/service.py (which checks the name, mode and user); the plans come from cli/routing.py,
the unit text from service/unit.py, the files and systemctl from service/manage.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.cli.common import confirm, read_api_key, server_options
from launcher.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from launcher.cli.routing import Routing
    from launcher.service.manage import Locations, Record


def cmd_install_router(args: argparse.Namespace, name: str, run_as: str | None, runq_paths: list[str]) -> int:
    """`runq_paths`: where runq itself lives (its Python and package), bound in when under /tmp."""
    from launcher.cli.routing import routing
    from launcher.service import manage as service
    from launcher.service.unit import unit_name
    from launcher.view.clients import client_lines

    if args.model or args.quant:
        hint = "leave MODEL and --quant out, or install one model: runq service install MODEL"
        raise UsageError("--all serves every complete model on disk, each quant its own model", hint=hint)
    if args.rpc or args.worker:
        raise UsageError("a router service does not plan over other hosts yet", hint="install one model with --rpc")
    loc = service.Locations.for_mode(args.mode)
    opts = server_options(args)
    read_api_key(opts)
    service.check_port(loc, name, opts.port)
    log_dir = loc.log_path(name).parent
    if any(c in str(log_dir) for c in " \t\"'\\%$"):
        raise UsageError(f"{log_dir}: a path with blanks, quotes or % cannot be the router's LLAMA_CACHE",
                         hint="set XDG_STATE_HOME to a plainer path")  # fmt: skip
    ns = argparse.Namespace(**{**vars(args), "models": [], "auto": True, "no_calibrate": True})
    r = routing(ns, opts, loc.preset_path(name), log_dir, dry=args.dry_run)
    record, text, tmp = _record_and_unit(args, name, run_as, loc, r, opts, runq_paths)
    if tmp:
        print(f"Warning: {tmp}", file=sys.stderr)
    if args.dry_run:
        print(f"# {loc.unit_path(name)}")
        sys.stdout.write(text)
        print(f"\n# {loc.preset_path(name)}: {len(r.models)} model(s), each its own plan")
        sys.stdout.write(r.preset_text)
        return EXIT_OK
    write_unit = service.check_unit_slot(loc, name, text, args.force)
    systemd = service.Systemd(args.mode)
    systemd.check()
    if not confirm(f"Install and start {unit_name(name)} ({args.mode} unit, {len(r.models)} models)?", args.yes):
        return 1
    service.write_atomic(loc.record_path(name), record.to_json())
    service.write_atomic(loc.preset_path(name), r.preset_text)
    if write_unit:
        service.write_atomic(loc.unit_path(name), text)
    if args.mode == "user":  # the unit's ReadWritePaths= (a system unit's StateDirectory= is that directory)
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    systemd.systemctl("daemon-reload")
    print(f"Starting {unit_name(name)} (waits until the router answers with every model as planned)…")
    t0 = time.monotonic()
    systemd.systemctl("enable", unit_name(name))
    systemd.systemctl("restart", unit_name(name))  # a running router takes the new preset this way
    url = f"http://{record.host}:{record.port}"
    print(f"Running: {url} (ready in {time.monotonic() - t0:.0f} s), {len(r.models)} models, at most "
          f"{r.models_max} loaded at a time")  # fmt: skip
    print(f"  unit: {loc.unit_path(name)}\n  preset: {loc.preset_path(name)}\n  logs: runq service logs {name}")
    from launcher.llama.server import base_url

    for line in client_lines(base_url(record.host, record.port), opts.api_key_file, bool(opts.api_key_file),
                             [s.id for s in r.models]):  # fmt: skip
        print(line)
    print("Re-plan after adding or removing models: the same command again.")
    return EXIT_OK


def _record_and_unit(args: argparse.Namespace, name: str, run_as: str | None, loc: Locations, r: Routing,
                     opts: Any, runq_paths: list[str]) -> tuple[Record, str, str | None]:  # fmt: skip
    """The record, the unit's text and what to warn about paths under /tmp (bound in read-only)."""
    from launcher.model.shards import shard_names
    from launcher.service.manage import Record, RoutedModel, SavedPlan
    from launcher.service.unit import UnitSpec, private_tmp_paths, private_tmp_warning, render
    from launcher.view import plan as render_plan

    log_dir = loc.log_path(name).parent
    need: dict[int, int] = {}  # per GPU, what the largest model there needs free (one model at a time)
    models = []
    reads: list[str] = [r.argv[0], str(loc.preset_path(name)), sys.executable]
    hidden: list[str] = [str(Path(r.argv[0]).parent), str(loc.preset_path(name)), *runq_paths]  # bound if in /tmp
    for s in r.models:
        plan = s.planned.plan
        gpus = [(int(d.name.removeprefix("CUDA")), d.used_bytes + d.margin_bytes) for d in plan.gpu_devices]
        for i, b in gpus:
            need[i] = max(need.get(i, 0), b)
        models.append(RoutedModel(id=s.id, model=s.planned.target.key, quant=s.planned.quant, argv=s.argv,
                                  log_path=str(log_dir / f"{s.id}.log"), gpus=gpus,
                                  plan=SavedPlan.model_validate(render_plan.plan_json(plan))))  # fmt: skip
        profile = s.planned.target.profile
        template = profile.template_path() if profile else None
        model = s.argv[s.argv.index("-m") + 1]
        reads += [model, *([str(template)] if template else [])]
        hidden += [*shard_names(model), *([str(template)] if template else [])]
    key = [opts.api_key_file] if opts.api_key_file else []
    binds = private_tmp_paths([*hidden, *key])
    record = Record(
        name=name, mode=args.mode, model=f"(router: {len(models)} models)", quant="", host=opts.host, port=opts.port,
        argv=r.argv, log_path=str(log_dir), gpus=sorted(need.items()), api_key_file=opts.api_key_file, kind="router",
        models=models,
    )  # fmt: skip
    spec = UnitSpec(
        name=name, description=f"runq: model router on {opts.host}:{opts.port}", exec_start=r.argv,
        runq=[sys.executable, "-m", "launcher"], mode=args.mode, run_as=run_as, gpus=tuple(sorted(need.items())),
        state_dir=f"runq/{name}", read_paths=(*reads, *key), binds=binds,
        mlock=any("mlock" in s.planned.plan.load_mode for s in r.models), environment=(f"LLAMA_CACHE={log_dir}",),
        write_paths=(str(log_dir),) if args.mode == "user" else (),
    )  # fmt: skip
    return record, render(spec), private_tmp_warning(binds)


def _key(r: Record) -> str | None:
    return Path(r.api_key_file).read_text().strip() if r.api_key_file else None


def verify_router(r: Record, timeout: float) -> int:
    """ExecStartPost of a router: it answers, and would run every model with exactly the saved command."""
    from launcher.llama.capabilities import run_text
    from launcher.llama.preset import parse_options, router_problems
    from launcher.llama.router import served_args
    from launcher.llama.server import base_url, http_json

    url, key = base_url(r.host, r.port), _key(r)
    t0 = time.monotonic()
    while True:
        try:
            listed = served_args(http_json(url, "/models", key, timeout=5).get("data", []))
            break
        except (OSError, ValueError):
            if time.monotonic() - t0 > timeout:
                print(f"Error: {r.name} did not answer within {timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(1)
    options = parse_options(run_text([r.argv[0], "--help"]))
    problems = router_problems(listed, {m.id: m.argv for m in r.models}, options)
    for problem in problems:
        print(f"Error: {problem}: failing the start instead of serving other commands than planned", file=sys.stderr)
    if problems:
        return 1
    ids = ", ".join(m.id for m in r.models)
    print(f"{r.name}: router ready after {time.monotonic() - t0:.0f} s with {len(r.models)} models as planned "
          f"({ids}); `runq service status {r.name}` checks each loaded one", flush=True)  # fmt: skip
    return EXIT_OK


def router_status(r: Record) -> int:
    """Each model's state in the router; for a loaded one, its memory per device against its plan."""
    from launcher.llama import log as llama_log
    from launcher.llama.server import base_url, http_json

    url = base_url(r.host, r.port)
    try:
        states = {str(m.get("id")): str((m.get("status") or {}).get("value", "?"))
                  for m in http_json(url, "/models", _key(r), timeout=5).get("data", [])}  # fmt: skip
        print(f"  router: answering at {url}, {len(r.models)} models")
    except (OSError, ValueError) as e:
        states = {}
        print(f"  router: not answering at {url} ({getattr(e, 'reason', e)})")
    for m in r.models:
        print(f"  {m.id}: {states.get(m.id, '?')}, {m.model} {m.quant}, ctx {m.plan.ctx:,}, "
              f"{m.plan.predicted_tg_tps} tokens/s predicted")  # fmt: skip
        if states.get(m.id) != "loaded":
            continue
        try:
            text = Path(m.log_path).read_text(errors="replace")
        except OSError:
            text = ""
        check = llama_log.verify(m.plan.view, llama_log.parse(text), has_gpu=bool(m.gpus))
        for line in check.lines:
            print(f"    {line}")
        for problem in check.problems:
            print(f"    problem: {problem}")
    return EXIT_OK
