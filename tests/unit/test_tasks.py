"""The task suite: generators, splits, scoring."""

from __future__ import annotations

import random

import pytest

from toolkit import tasks


@pytest.mark.parametrize("family", tasks.FAMILIES)
@pytest.mark.parametrize("tier", tasks.TIERS)
def test_generators_produce_well_formed_examples(family: str, tier: int) -> None:
    """Prompts name the family and end with '='; answers are non-empty."""
    rng = random.Random(0)
    for _ in range(50):
        ex = tasks.sample(rng, family, tier, "train")
        assert ex.prompt.startswith(family + " ") and ex.prompt.endswith("=")
        assert ex.answer and "=" not in ex.answer


def test_splits_never_overlap() -> None:
    """No prompt appears in two of train, calibration and test."""
    per = {s: {e.prompt for e in tasks.dataset(s, 30, 0)} for s in ("train", "calib", "test")}
    assert not per["train"] & per["calib"]
    assert not per["train"] & per["test"]
    assert not per["calib"] & per["test"]
    assert all(tasks.split_of(p) == s for s, ps in per.items() for p in ps)


def test_datasets_are_deterministic_and_cover_every_cell() -> None:
    """Same seed, same examples; every (family, tier) is present."""
    a, b = tasks.dataset("test", 10, 3), tasks.dataset("test", 10, 3)
    assert a == b
    assert {(e.family, e.tier) for e in a} == {(f, t) for f in tasks.FAMILIES for t in tasks.TIERS}


def test_training_stream_excludes_held_out_when_asked() -> None:
    """A stream over the in-distribution families never yields the held-out one."""
    stream = tasks.stream(0, tasks.IN_DISTRIBUTION)
    assert all(next(stream).family in tasks.IN_DISTRIBUTION for _ in range(500))


def test_noise_prompts_never_use_a_real_family_word() -> None:
    """Outlier-exposure prompts avoid every family's command, held-out included."""
    for p in tasks.noise_prompts(random.Random(0), 2000):
        assert p.split(" ")[0] not in tasks.FAMILIES


def _check(prompt: str) -> str:
    """An independent answer for a prompt, written from the task definitions."""
    cmd, *args = prompt[:-1].split(" ")
    if cmd == "add":
        return str(sum(int(a) for a in args))
    if cmd == "rev":
        return args[0][::-1]
    if cmd == "sort":
        return "".join(sorted(args[0]))
    if cmd == "count":
        return str(sum(ch == args[0] for ch in args[1]))
    if cmd == "shift":
        return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in args[0])
    assert cmd == "max"
    return max(args[0])


def test_answers_are_right() -> None:
    """Every generated answer matches an independent computation; scoring is exact match."""
    for ex in tasks.dataset("calib", 20, 1):
        assert ex.answer == _check(ex.prompt), ex
        assert tasks.score(ex, ex.answer) and not tasks.score(ex, ex.answer + " ")
