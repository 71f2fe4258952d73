"""The -ot builder: numeric-range regexes, and exact selection under llama.cpp's rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import require_profile
from launcher.measure.synth import SynthModel
from launcher.model.shards import open_local
from launcher.plan.overrides import Override, build, effective_buffers, int_range_regex, layers_regex


@pytest.mark.parametrize(
    ("lo", "hi"), [(0, 0), (0, 9), (3, 17), (9, 60), (10, 99), (7, 123), (99, 100), (0, 199), (58, 60)]
)
def test_int_range_regex_fixed(lo: int, hi: int) -> None:
    rx = re.compile(f"(?:{int_range_regex(lo, hi)})")
    for n in range(0, 1001):
        assert bool(rx.fullmatch(str(n))) == (lo <= n <= hi), (lo, hi, n)


@settings(max_examples=300, deadline=None)
@given(lo=st.integers(0, 300), span=st.integers(0, 300))
def test_int_range_regex_property(lo: int, span: int) -> None:
    hi = lo + span
    rx = re.compile(f"(?:{int_range_regex(lo, hi)})")
    for n in {0, 1, 9, 10, 99, 100, 999, lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, (lo + hi) // 2}:
        if n >= 0:
            assert bool(rx.fullmatch(str(n))) == (lo <= n <= hi)


def test_layers_regex_is_one_range_not_52_patterns() -> None:
    assert layers_regex(range(9, 61)) == "9|[1-5][0-9]|60"
    assert layers_regex([3, 4, 5, 9]) == "[3-5]|9"


def _names_of(model: SynthModel) -> list[str]:
    return [t.name for t in open_local(model.path).tensors.tensors]


def _deepseek_names() -> list[str]:
    p = require_profile("deepseek-v3.1")
    return [t.name for t in estimate(p, p.quants[0]).tensors.tensors]


def _check(target: set[str], names: list[str], dont_care: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    patterns = build(target, names, dont_care=dont_care)
    selected = {n for n in names if any(re.search(p, n) for p in patterns)}
    assert target <= selected, sorted(target - selected)[:5]
    assert selected <= target | dont_care, sorted(selected - target - dont_care)[:5]
    return patterns


def _check_short(target: set[str], names: list[str], dont_care: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Exact, and short: layer ranges instead of one `^name$` per tensor, at most one pattern per kind of
    tensor (ffn_up_exps, attn_norm, …), and `^name$` only for tensors outside the blocks."""
    patterns = _check(target, names, dont_care)
    blk_kinds = {n.split(".")[2] for n in target if n.startswith("blk.")}
    outside = {n for n in target if not n.startswith("blk.")}
    assert not [p for p in patterns if p.startswith("^blk")], patterns
    assert len(patterns) <= len(blk_kinds) + len(outside), (patterns, sorted(blk_kinds))
    return patterns


def test_all_experts_is_one_short_pattern() -> None:
    names = _deepseek_names()
    target = {n for n in names if "_exps." in n}
    assert _check(target, names) == [r"\.ffn_(?:down|gate|up)_exps\."]


def test_a_layer_range_of_experts_is_one_pattern() -> None:
    names = _deepseek_names()
    target = {n for n in names if "_exps." in n and 21 <= int(n.split(".")[1]) <= 60}
    patterns = _check(target, names)
    assert patterns == [r"blk\.(?:2[1-9]|[3-5][0-9]|60)\.ffn_(?:down|gate|up)_exps\."]


def test_a_partial_layer_adds_one_pattern() -> None:
    names = _deepseek_names()
    target = {n for n in names if "_exps." in n and int(n.split(".")[1]) >= 11}
    target.add("blk.10.ffn_up_exps.weight")
    assert len(_check(target, names)) == 2


def test_dont_care_makes_patterns_shorter() -> None:
    names = _deepseek_names()
    # Layers 0-20 are on the CPU anyway (-ngl): their experts may be matched too.
    dont_care = {n for n in names if n.startswith("blk.") and int(n.split(".")[1]) <= 20}
    target = {n for n in names if "_exps." in n and int(n.split(".")[1]) >= 21}
    exact = _check(target, names)
    loose = _check(target, names, dont_care)
    assert exact == [r"blk\.(?:2[1-9]|[3-5][0-9]|60)\.ffn_(?:down|gate|up)_exps\."]
    assert loose == [r"\.ffn_(?:down|gate|up)_exps\."]  # every layer: no layer part at all
    assert len(loose[0]) < len(exact[0])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_layer_sets_select_exactly(data: st.DataObject, models: dict[str, SynthModel]) -> None:
    key = data.draw(st.sampled_from(sorted(models)))
    names = _names_of(models[key]) if key != "deepseek-v3.1" else _deepseek_names()
    expert_names = [n for n in names if "_exps." in n]
    layers = sorted({int(n.split(".")[1]) for n in expert_names})
    chosen = data.draw(st.sets(st.sampled_from(layers)))
    kinds = data.draw(st.sets(st.sampled_from(sorted({n.split(".")[2] for n in expert_names})), min_size=1))
    target = {n for n in expert_names if int(n.split(".")[1]) in chosen and n.split(".")[2] in kinds}
    extra = data.draw(st.sets(st.sampled_from(names), max_size=3))  # odd tensors too: norms, embeddings
    target |= extra
    _check_short(target, names)


@settings(max_examples=60, deadline=None)
@given(layers=st.sets(st.integers(0, 60)), dont=st.sets(st.integers(0, 60)))
def test_random_layer_sets_on_the_real_shape(layers: set[int], dont: set[int]) -> None:
    names = _deepseek_names()
    target = {n for n in names if "_exps." in n and int(n.split(".")[1]) in layers}
    dont_care = {n for n in names if n.startswith("blk.") and int(n.split(".")[1]) in dont - layers}
    patterns = _check_short(target, names, dont_care)
    assert len(patterns) <= 1  # one pattern for the three expert kinds (they share the layer set)


def test_effective_buffers_first_match_wins() -> None:
    names = ["blk.1.ffn_up_exps.weight", "blk.2.ffn_up_exps.weight"]
    got = effective_buffers(
        names,
        [Override(r"blk\.1\.", "CUDA1"), Override(r"ffn_up_exps", "CPU")],
        dict.fromkeys(names, "CUDA0"),
    )
    assert got == {"blk.1.ffn_up_exps.weight": "CUDA1", "blk.2.ffn_up_exps.weight": "CPU"}
