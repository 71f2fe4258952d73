"""`runq plan` and `runq pull`: the plan, rendered; one quant downloaded.

CLI layer (prints, exit codes). Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from launcher.cli.common import print_json, resolve_machine
from launcher.errors import EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.catalog import sampling
    from launcher.cli.common import plan_for
    from launcher.errors import DoesNotFitError
    from launcher.pipeline.plan import command
    from launcher.plan.inputs import ServerOptions
    from launcher.view import plan as render_plan

    machine = resolve_machine(args)
    try:
        p, _ = plan_for(args, server=not args.cli, machine=machine)
    except DoesNotFitError as e:
        _explain_no_fit(args, e, args.model, machine)
        raise
    sizes = f"{p.target.sizes}; KV cache and compute: {p.sizes}"
    argv = command(p, server=None if args.cli else ServerOptions())
    chosen = p.chosen
    values = sampling.effective(p.target.profile.sampling if p.target.profile else None, chosen.source.sampling)
    measured = p.tuned.note if p.tuned else None  # the last `runq tune` here, applied to this plan
    tc = p.chat_template
    if args.json:
        print_json({**render_plan.choice_json(p.choice, argv, values), "sizes": sizes,
                    "notes": list(p.machine.notes), "measured": measured,
                    "chat_template": {"source": tc.source, "file": str(tc.path) if tc.path else None,
                                      "note": tc.note}})  # fmt: skip
    else:
        print(render_plan.choice_text(p.choice, p.machine, argv, sizes, values, notes=[tc.note] if tc.note else []))
        if measured:
            print(f"Measured: {measured}")
    return EXIT_OK


def _explain_no_fit(args: argparse.Namespace, e: Any, model_name: str, machine: Any) -> None:
    from launcher.view import plan as render_plan

    cands = e.detail or []
    if args.json:
        print_json({"model": model_name, "fits": False, "error": e.message, "hint": e.hint,
                    "candidates": [render_plan.candidate_json(c) for c in cands]})  # fmt: skip
    elif cands:
        print(f"{model_name} on {render_plan.machine_line(machine)}:")
        print("\n".join(render_plan.candidates_table(cands, None)))


def cmd_pull(args: argparse.Namespace) -> int:
    from launcher.cli.common import pull_with_progress, show_profile_notes
    from launcher.errors import HubError, Offline
    from launcher.hub import pull
    from launcher.pipeline.target import check_model_name, pin_quant, require_profile
    from launcher.plan.inputs import check_ctx
    from launcher.units import fmt_bytes, fmt_decimal, parse_size

    check_model_name(args.model)
    check_ctx(args.ctx)
    disk_free = parse_size(args.disk_free, what="--disk-free") if args.disk_free else None
    show_profile_notes()
    profile = require_profile(args.model)
    try:
        listing, remote = pull.list_quants(profile)
    except Offline as e:
        raise HubError(f"cannot download {profile.repo}: {e.message}",
                           hint="connect to the network and retry") from None  # fmt: skip
    name = pin_quant(profile, args.quant, list(remote)) if args.quant else _largest_that_fits(args, profile)
    dest = Path(args.dir).resolve() if args.dir else None
    st = pull.state(profile, name, dest, listing)
    rq = st.quant
    print(
        f"{profile.repo} {name}: {len(rq.files)} file(s), {fmt_decimal(rq.size_bytes)} ({fmt_bytes(rq.size_bytes)}); "
        f"{len(st.plan.complete)} already here, {fmt_decimal(st.plan.missing_bytes)} to download into {st.where}"
    )
    if st.plan.partial_bytes:
        print(f"Continuing interrupted downloads: the {fmt_decimal(st.plan.partial_bytes)} already here are kept.")
    pull_with_progress(st, disk_free)
    return EXIT_OK


def _largest_that_fits(args: argparse.Namespace, profile: Any) -> str:
    from launcher.cli.common import plan_for

    p, _ = plan_for(args, server=True)
    print(f"{p.quant}: the largest quant that fits this machine ({p.plan.predicted_tg_tps:.1f} tokens/s "
          f"predicted; `runq plan {profile.name}` explains)")  # fmt: skip
    return p.quant
