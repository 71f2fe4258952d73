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
    from launcher.cli.common import llama_sizes, plan_inputs, resolve_target
    from launcher.errors import DoesNotFitError
    from launcher.llama.argv import build_argv, launch_for
    from launcher.pipeline.measured import measured_note, with_speed
    from launcher.pipeline.target import expected_model_path
    from launcher.plan.choose import choose
    from launcher.plan.inputs import buffers_of, planning_request
    from launcher.view import plan as render_plan

    inputs = plan_inputs(args, server=not args.cli)
    machine = with_speed(resolve_machine(args))  # this machine's measured constants, when calibrated
    target = resolve_target(args)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    try:
        choice = choose(target.name, machine, list(target.sources), req, pinned=target.pinned,
                        ctx_pinned=args.ctx is not None)  # fmt: skip
    except DoesNotFitError as e:
        _explain_no_fit(args, e, target.name, machine)
        raise
    try:
        choice, projected = llama_sizes(args, target, machine, req, choice)
    except DoesNotFitError as e:
        _explain_no_fit(args, e, target.name, machine)
        raise
    sizes = f"{target.sizes}; KV cache and compute: {projected}"
    chosen = choice.chosen
    model_path = str(target.model_path) if target.model_path else ""
    if target.profile and not model_path:
        repo_path = target.first_paths.get(chosen.source.name) or target.profile.quant(chosen.source.name).path
        model_path = expected_model_path(target.profile.repo, repo_path)
    from launcher.plan.inputs import ServerOptions

    launch = launch_for("llama-cli" if args.cli else "llama-server", model_path, target.profile,
                        server=None if args.cli else ServerOptions(), gguf_sampling=chosen.source.sampling)  # fmt: skip
    argv = build_argv(chosen.plan, launch)
    values = sampling.effective(target.profile.sampling if target.profile else None, chosen.source.sampling)
    measured = measured_note(machine, target, chosen.source.name)  # the last `runq tune` here, if any
    if args.json:
        print_json({**render_plan.choice_json(choice, argv, values), "sizes": sizes,
                    "notes": list(machine.notes), "measured": measured})  # fmt: skip
    else:
        print(render_plan.choice_text(choice, machine, argv, sizes, values))
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
    from launcher import errors as hub
    from launcher.cli.common import pull_with_progress, show_profile_notes
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
    except hub.Offline as e:
        raise hub.HubError(f"cannot download {profile.repo}: {e.message}",
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
    from launcher.cli.common import plan_inputs
    from launcher.pipeline.target import resolve
    from launcher.plan.choose import choose
    from launcher.plan.inputs import buffers_of, planning_request

    inputs = plan_inputs(args, server=True)
    machine = resolve_machine(args)
    target = resolve(profile.name)
    req = planning_request(inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    choice = choose(target.name, machine, list(target.sources), req)
    name = choice.chosen.source.name
    print(f"{name}: the largest quant that fits this machine ({choice.chosen.plan.predicted_tg_tps:.1f} tokens/s "
          f"predicted; `runq plan {profile.name}` explains)")  # fmt: skip
    return name
