"""What a router runs, planned: every model by the one pipeline, exactly as `runq run MODEL --server` plans it
(as the only model resident; --models-max N > 1 only when any N of the plans fit together), rendered into the same
llama-server command, and that command as the model's preset section. Shared by `runq serve` and the router
service (`runq service install --all`).

CLI layer (it may ask before downloading or building, and prints notes); no command of its own.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.cli.common import ensure_binaries, ensure_model, resolve_machine, say
from launcher.errors import DoesNotFitError, RunqError, UsageError

if TYPE_CHECKING:
    from launcher.machine.spec import Machine
    from launcher.pipeline.plan import Ask, Planned
    from launcher.plan.inputs import ServerOptions


@dataclass(frozen=True)
class Served:
    """One model of the router: its API id, its plan, and the llama-server command `runq run --server` runs."""

    id: str
    planned: Planned
    argv: list[str]  # binary first, with the router-owned flags still in (the preset drops them)


@dataclass(frozen=True)
class Routing:
    """Everything the router runs: its models, its preset, its own command."""

    models: list[Served]
    models_max: int
    bin_dir: Path
    preset_text: str
    argv: list[str]
    options: dict[str, str]  # the build's option spellings (empty without a build: a dry run before `runq build`)


def asks(args: argparse.Namespace) -> list[Ask]:
    """An Ask per model: the ones named, else every complete quant on disk (a catalog model by its name and quant,
    so its profile, tune result and cache path are the ones `runq run NAME --quant Q` uses; read offline)."""
    from launcher.catalog.profiles import find_profile
    from launcher.cli.common import ask_for
    from launcher.hub.local import scan_hf_cache

    def ask(model: str, quant: str | None, **more: Any) -> Ask:
        ns = argparse.Namespace(**{**vars(args), "model": model, "quant": quant})
        return replace(ask_for(ns, server=True)[0], **more)

    if args.models:
        return [ask(m, None) for m in args.models]
    found = [q for q in scan_hf_cache()[0] if q.complete]
    if not found:
        hint = "`runq pull MODEL` downloads one; or name .gguf files: runq serve A.gguf B.gguf"
        raise UsageError("no complete model on disk to serve", hint=hint)
    out = []
    for q in found:
        profile = find_profile(q.repo)
        out.append(ask(profile.name, q.name, network=False) if profile is not None else ask(str(q.first), None))
    return out


def id_source(p: Planned) -> str:
    """A model's API id: the name `runq run MODEL --server` gives it (llama/argv.model_alias: the catalog name, or
    the file's name as given), so a client set up for one works with the other."""
    from launcher.llama.argv import model_alias
    from launcher.pipeline.plan import model_path

    return model_alias(p.target.profile, str(p.target.key if p.target.model_path else model_path(p)))


def with_quants(served: list[Served]) -> list[Served]:
    """Two quants of one model on disk: each id gets its quant (`deepseek-v3.1-UD-Q2_K_XL`)."""
    from collections import Counter

    seen = Counter(s.id for s in served)
    return [replace(s, id=f"{s.id}-{s.planned.quant.removesuffix('.gguf')}") if seen[s.id] > 1 else s for s in served]


def plan_models(args: argparse.Namespace, opts: ServerOptions, machine: Machine, *, dry: bool) -> list[Served]:
    """Every model planned as `runq run MODEL --server` plans it; on-disk models that do not fit are left out."""
    from launcher.cli.common import show_profile_notes
    from launcher.llama.preset import unique_ids
    from launcher.pipeline.plan import command, plan

    show_profile_notes()
    calibrate = not dry and not args.no_calibrate
    served: list[Served] = []
    bins: dict[Path, list[str]] = {}
    builds: dict[tuple[str, ...], Path] = {}
    for ask in asks(args):
        try:
            p = plan(ask, machine, calibrate=calibrate, say=say)
        except DoesNotFitError as e:
            if args.models:
                raise
            say(f"Note: left out {ask.model}{' ' + ask.quant if ask.quant else ''}: {e.message}")
            continue
        model_path = ensure_model(p.target, p.quant, auto=args.auto, yes=args.yes, dry=dry)
        quirks = tuple(p.target.profile.build_quirks) if p.target.profile else ()
        if quirks not in builds:  # one build per set of quirks (a dry run says "would build" once)
            builds[quirks] = ensure_binaries(args.llama_bin, args.source, allowed=args.auto or bool(args.llama_bin),
                                             dry=dry, quirks=quirks)  # fmt: skip
        binaries = builds[quirks]
        bins.setdefault(binaries, []).append(id_source(p))
        argv = command(p, server=opts, model=str(Path(model_path).absolute()), bin_dir=binaries)
        served.append(Served(id_source(p), p, argv))
    if len(bins) > 1:
        which = "; ".join(f"{', '.join(ids)}: {b}" for b, ids in bins.items())
        hint = "serve them in separate routers (runq serve A --port 8080, runq serve B --port 8081)"
        raise UsageError(f"these models need different llama.cpp builds ({which}): one router runs one", hint=hint)
    if not served:
        raise DoesNotFitError("none of the models on disk fits this machine", hint="see `runq models --local`")
    served = with_quants(served)
    ids = unique_ids(s.id for s in served)
    return [replace(s, id=i) for s, i in zip(served, ids, strict=True)]


def check_together(served: list[Served], models_max: int) -> None:
    """--models-max N > 1 only when any N of the plans fit together; says so either way."""
    from launcher.plan.together import together_lines, together_problems

    at_once = min(models_max, len(served))
    plans = [(s.id, s.planned.plan) for s in served]
    problems = together_problems(plans, at_once)
    if problems:
        raise DoesNotFitError(
            f"{at_once} of these models loaded at once do not fit: " + "; ".join(problems),
            hint="--models-max 1 loads one at a time (each planned for the whole machine), or serve fewer models",
        )
    if at_once > 1:
        print(f"Checked: any {at_once} of these models fit together ({'; '.join(together_lines(plans, at_once))})")


def routing(args: argparse.Namespace, opts: ServerOptions, preset: Path, log_dir: Path, *, dry: bool) -> Routing:
    """Plan every model, check they fit as asked, and render the preset (to be written at `preset`; each model logs
    to log_dir/ID.log) and the router's command."""
    from launcher.llama import preset as presets
    from launcher.llama.capabilities import run_text

    machine = resolve_machine(args)
    served = plan_models(args, opts, machine, dry=dry)
    check_together(served, args.models_max)
    sections = [presets.section_of(s.id, s.argv, log_file=str(log_dir / f"{s.id}.log")) for s in served]
    bin_dir = Path(served[0].argv[0]).parent
    binary = bin_dir / "llama-server"
    options = presets.parse_options(run_text([str(binary), "--help"])) if binary.is_file() else {}
    bad = presets.unknown_keys(sections, options) if options else []
    if bad:
        hint = "runq build (the pinned llama.cpp), or --llama-bin a newer build"
        raise RunqError(f"{binary} does not know these options, so its router would refuse the preset: "
                        + ", ".join(bad), hint=hint)  # fmt: skip
    comment = (f"Generated by runq for {len(served)} model(s) on this machine; each section is the command "
               f"`runq run MODEL --server` runs.\nRe-plan with the same `runq serve` (or `runq service install "
               f"--all`) command; edits here are overwritten.")  # fmt: skip
    text = presets.render_ini(sections, comment=comment)
    argv = presets.router_argv(str(binary), str(preset), models_max=args.models_max,
                               host=opts.host, port=opts.port, api_key_file=opts.api_key_file,
                               api_key=opts.api_key)  # fmt: skip
    return Routing(served, args.models_max, bin_dir, text, argv, options)
