"""Whether several plans, each made as the only model on the machine, also fit when some are loaded at once.

Pure: no I/O. A router with `--models-max N` may hold any N of its models at the same time, so the check is the
worst case: on every device, the N largest uses together against that device's budget (capacity less margin).
"""

from __future__ import annotations

from collections.abc import Sequence

from launcher.plan.types import Plan
from launcher.units import fmt_bytes


def together_problems(plans: Sequence[tuple[str, Plan]], at_once: int) -> list[str]:
    """Why any `at_once` of these (name, plan) pairs would not fit together; [] when they do."""
    if at_once <= 1 or len(plans) <= 1:
        return []
    problems = []
    names = sorted({d.name for _, p in plans for d in p.devices})
    for device in names:
        uses = sorted(((d.used_bytes, name) for name, p in plans for d in p.devices if d.name == device),
                      reverse=True)[:at_once]  # fmt: skip
        budget = min(d.budget_bytes for _, p in plans for d in p.devices if d.name == device)
        total = sum(u for u, _ in uses)
        if total > budget:
            who = " + ".join(f"{name} {fmt_bytes(u)}" for u, name in uses)
            problems.append(f"{device}: {who} = {fmt_bytes(total)}, over the {fmt_bytes(budget)} it has for models")
    return problems


def together_lines(plans: Sequence[tuple[str, Plan]], at_once: int) -> list[str]:
    """Per device, the largest `at_once` uses together against the budget (what the check above compared)."""
    lines = []
    for device in sorted({d.name for _, p in plans for d in p.devices}):
        uses = sorted((d.used_bytes for _, p in plans for d in p.devices if d.name == device), reverse=True)
        budget = min(d.budget_bytes for _, p in plans for d in p.devices if d.name == device)
        lines.append(f"{device}: {fmt_bytes(sum(uses[:at_once]))} of {fmt_bytes(budget)} at most")
    return lines
