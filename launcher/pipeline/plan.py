"""The one planning pipeline: what the user asked (an Ask) and the machine -> one Planned value, and its command.

Every front end calls it — `runq plan`, `run`, `service install/render`, `pull`'s choice, `tune`, the TUI and
`runq models` — so they show the same quant, the same numbers and the same command for the same inputs. In order:
1. the machine with its measured decode constants (this machine, calibrated; a first real run may calibrate);
2. the target: a model name, a Hub repo id or a .gguf file, every quant a source (exact where headers are at hand);
3. the request, every value checked (plan/inputs.py), whichever front end it came from;
4. a saved `runq tune` result for this model and machine, as request fields (never a patched command line);
5. the choice: the pinned quant, or the largest that fits;
6. llama.cpp's own sizes for the chosen quant (llama-fit-params on the file or a header-only replica) when a build
   is here, placed again on them;
7. llama.cpp's own fit asked for its placement of the same inputs (pipeline/fit_check.py): runq's is grown to it
   where it kept fewer expert bytes on a GPU; the plan says whose placement it took and why.
command() renders a Planned as a llama.cpp command through llama/argv.py, the only writer of flags.
An edge: it reads files, caches and (for a model name, unless told not to) the Hub.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import DoesNotFitError
from launcher.plan.inputs import PlanInputs, ServerOptions

if TYPE_CHECKING:
    from launcher.catalog.chat_templates import TemplateChoice
    from launcher.catalog.sources import ModelSource
    from launcher.llama.binaries import Binaries
    from launcher.machine.spec import Machine
    from launcher.measure.store import TuneRecord
    from launcher.pipeline.target import ModelTarget
    from launcher.plan.choose import Candidate, Choice, Replan
    from launcher.plan.projection import Projection
    from launcher.plan.types import Plan, Request


def _quiet(_text: str) -> None:
    pass


@dataclass(frozen=True)
class Ask:
    """What the user asked for, from any front end: the model, the pins, and how much the pipeline may look."""

    model: str  # a profile name or alias, a Hub repo id, or a .gguf path (shard 1 of a set)
    inputs: PlanInputs = field(default_factory=PlanInputs)  # the pins (flags after `--` already on top)
    quant: str | None = None  # --quant
    pins: Mapping[str, Any] = field(default_factory=dict)  # which llama.cpp flags after `--` pinned the plan
    estimate: bool = False  # plan from published sizes: read no headers
    network: bool = True  # may read headers from the Hub (else cached ones only)
    project: bool = True  # ask llama.cpp for its sizes when a build is here
    tuned: bool = True  # use a saved `runq tune` result (tune itself plans without one)
    llama_bin: str | None = None  # the user's own build instead of runq's


@dataclass(frozen=True)
class Planned:
    """One plan, as every front end renders it."""

    ask: Ask
    machine: Machine  # with its measured constants when it has them
    target: ModelTarget
    request: Request  # checked, tuned knobs included, llama.cpp's projections included
    choice: Choice
    sizes: str  # where the KV cache and compute sizes came from
    binaries: Binaries | None  # the llama.cpp that will run it, when there is one yet
    tuned: TuneRecord | None = None

    @property
    def chosen(self) -> Candidate:
        return self.choice.chosen

    @property
    def plan(self) -> Plan:
        return self.choice.chosen.plan

    @property
    def quant(self) -> str:
        return self.choice.chosen.source.name

    @property
    def chat_template(self) -> TemplateChoice:
        """The template the launch passes: the profile's, the GGUF's own, or for a GGUF without one runq's
        rendering of the llama.cpp built-in its tokens match (catalog/chat_templates.py)."""
        from launcher.catalog.chat_templates import choose_template

        profile = self.target.profile
        return choose_template(profile.template_path() if profile else None, self.chosen.source.chat)


def plan(
    ask: Ask,
    machine: Machine,
    *,
    calibrate: bool = False,
    say: Callable[[str], None] = _quiet,
    target: ModelTarget | None = None,
) -> Planned:
    """The pipeline (see the module docstring). `target`: the model when the front end resolved it already for
    this Ask (the TUI resolves each model once, then re-plans it as boxes change). Raises UsageError for bad input
    and DoesNotFitError (with every candidate in `detail`) when nothing fits."""
    from launcher.llama.binaries import binaries_here
    from launcher.pipeline.measured import apply_tuned, tune_record, with_speed
    from launcher.pipeline.target import resolve, with_quant
    from launcher.plan.inputs import buffers_of, planning_request

    if target is None:
        target = resolve(ask.model, quant=ask.quant, estimate=ask.estimate, network=ask.network)
    elif ask.quant:
        target = with_quant(target, ask.quant)
    quirks = tuple(target.profile.build_quirks) if target.profile else ()
    binaries = binaries_here(ask.llama_bin, quirks)
    machine = with_speed(machine, binaries, calibrate_now=calibrate, say=say)
    req = planning_request(ask.inputs, default_ctx=target.default_ctx, buffers=buffers_of(machine))
    rec = tune_record(machine, binaries, target, target.pinned) if ask.tuned else None
    if rec is not None:
        try:
            tuned = apply_tuned(req, rec, target, ask.pins)
            return _choose(ask, machine, target, tuned, binaries, pinned=target.pinned or rec.quant, rec=rec)
        except DoesNotFitError:
            if target.pinned:
                raise
            # The tuned quant does not fit these inputs (a longer context, say): plan as if never tuned.
    return _choose(ask, machine, target, req, binaries, pinned=target.pinned)


def _choose(ask: Ask, machine: Machine, target: ModelTarget, req: Request, binaries: Binaries | None, *,
            pinned: str | None, rec: TuneRecord | None = None) -> Planned:  # fmt: skip
    from launcher.plan.choose import choose

    why = "pinned with --quant" if target.pinned else None  # one file: no choice to explain
    if why is None and rec is not None and len(target.sources) > 1:
        why = f"the quant runq tune measured ({rec.tuned_at[:10]})"
    choice = choose(target.name, machine, list(target.sources), req, pinned=pinned,
                    ctx_pinned=ask.inputs.ctx is not None, pinned_why=why)  # fmt: skip
    if ask.estimate or not ask.project:
        return Planned(ask, machine, target, req, choice, "runq estimate (not asked)", binaries, rec)
    choice, sizes, answers = _project(choice, machine, req, target, binaries, pinned=pinned is not None)
    choice, req = _fit_check(choice, machine, replace(req, projections=answers), target, binaries)
    return Planned(ask, machine, target, req, choice, sizes, binaries, rec)


def _fit_check(choice: Choice, machine: Machine, req: Request, target: ModelTarget,
               binaries: Binaries | None) -> tuple[Choice, Request]:  # fmt: skip
    """Step 7: never behind llama.cpp's own fit (pipeline/fit_check.py)."""
    from launcher.errors import RunqError
    from launcher.pipeline.fit_check import check

    try:
        path = _model_file(target)(choice.chosen.source)
    except RunqError:
        path = None
    return check(choice, machine, req, binaries, path)


def _model_file(target: ModelTarget) -> Callable[[ModelSource], Path | None]:
    """Where llama.cpp can read a source's headers: the local file, or a header-only replica of a Hub quant whose
    headers are cached (None: not at hand)."""
    from launcher.hub.replica import hub_replica

    profile = target.profile
    repo = profile.repo if profile and target.model_path is None else None
    first_paths = dict(target.first_paths)
    if profile and repo:
        for q in profile.quants:
            first_paths.setdefault(q.name, q.path)

    def model_file(src: ModelSource) -> Path | None:
        if target.model_path is not None:
            return target.model_path
        if repo and src.exact and src.name in first_paths:
            return hub_replica(repo, first_paths[src.name])
        return None

    return model_file


def _project(choice: Choice, machine: Machine, req: Request, target: ModelTarget, binaries: Binaries | None, *,
             pinned: bool) -> tuple[Choice, str, tuple[Projection, ...]]:  # fmt: skip
    """The choice placed again on llama.cpp's sizes: a local file, or a Hub quant whose headers are cached (as a
    header-only replica). Raises DoesNotFitError when, on llama.cpp's sizes, nothing that was tried fits."""
    from launcher.llama.fit import project_sizes

    refined, note, answers = project_sizes(choice, machine, req, binaries, _model_file(target), pinned=pinned)
    p = refined.chosen.plan
    if not p.fits:
        raise DoesNotFitError(
            f"{refined.model} ({refined.chosen.source.name}) does not fit this machine at {p.ctx:,} tokens of "
            f"context on llama.cpp's own sizes: " + "; ".join(p.problems),
            hint="try a smaller --ctx or --quant",
            detail=list(refined.candidates),
        )
    return refined, note, answers


def replan_after_oom(planned: Planned) -> tuple[Planned, Replan]:
    """The same quant with one more expert layer of margin per GPU, after llama.cpp ran out of memory loading it."""
    from launcher.plan.choose import replan_after_oom as replan

    again = replan(planned.machine, planned.choice, planned.request)
    return replace(planned, choice=again.choice, request=again.request), again


def model_path(planned: Planned) -> str:
    """The file llama.cpp will load: the local file, or where the chosen quant is (or will be) in the cache."""
    from launcher.pipeline.target import expected_model_path

    t = planned.target
    if t.model_path is not None:
        return str(t.model_path)
    assert t.profile is not None
    repo_path = t.first_paths.get(planned.quant) or t.profile.quant(planned.quant).path
    return expected_model_path(t.profile.repo, repo_path)


def command(
    planned: Planned,
    *,
    server: ServerOptions | None = None,
    model: str | None = None,
    bin_dir: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The llama.cpp command that runs this plan: llama-server with `server` options (llama-cli without), the
    model at `model` (default: model_path()), the binaries in `bin_dir` (default: the build here), the user's own
    flags last. Flags are what that build accepts (its capabilities; the pinned commit's without a build)."""
    from launcher.llama.argv import build_argv, launch_for
    from launcher.llama.binaries import binaries_at

    where = bin_dir or (planned.binaries.bin_dir if planned.binaries else None)
    name = "llama-server" if server is not None else "llama-cli"
    # No build here yet: the binary's name (on PATH, or after a build) and the pinned commit's flags.
    b = binaries_at(where) if where else None
    h = b.help(name) if b else None
    launch = launch_for(b.tool(name) if b else name, model or model_path(planned), planned.target.profile,
                        server=server, extra=extra, flags=h.flags() if h else None, help=h,
                        where=b.label if b else "the pinned build",
                        gguf_sampling=planned.chosen.source.sampling)  # fmt: skip
    return build_argv(planned.plan, replace(launch, template_path=_str(planned.chat_template.path)))


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
