"""The built-in task suite: small, exactly scored problems in families and difficulty tiers.

A prompt reads ``"<family> <arguments>="`` and the answer is the text after ``=``. Each family has
three tiers; higher tiers are longer inputs (more numbers to add), which a small model gets wrong
more often. The family ``count`` is held out: the full model learns it, the proxy never sees it,
so the router must learn to escalate what the proxy does not know.

Splits never overlap by construction: a prompt's split is a function of its hash
(:func:`split_of`), so a generator for one split simply rejects prompts that belong to another.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "calib", "test"]
TIERS = (1, 2, 3)
IN_DISTRIBUTION = ("add", "rev", "sort", "shift", "max")
HELD_OUT = ("count",)
FAMILIES = IN_DISTRIBUTION + HELD_OUT
LETTERS = string.ascii_lowercase
# Training sees harder tiers more often: easy ones are learned early and need less data.
TIER_WEIGHTS = (0.25, 0.35, 0.4)


@dataclass(frozen=True)
class Example:
    family: str
    tier: int
    prompt: str  # ends with "="
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def split_of(prompt: str) -> Split:
    """The split a prompt belongs to: 10% test, 10% calibration, 80% train, fixed by its hash."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 100
    return "test" if bucket < 10 else "calib" if bucket < 20 else "train"


# Input lengths (or digit counts for `add`) per tier.
_LENGTHS = {1: (2, 3), 2: (4, 5), 3: (6, 7)}
_ADD_TERMS = {1: (2, 3), 2: (4, 5), 3: (6, 7)}  # how many one-digit numbers to add
_COUNT_LENGTHS = {1: (2, 5), 2: (6, 9), 3: (10, 13)}


def random_word(rng: random.Random, lo: int, hi: int, alphabet: str = LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _add(rng: random.Random, tier: int) -> tuple[str, str]:
    terms = [rng.randrange(10) for _ in range(rng.randint(*_ADD_TERMS[tier]))]
    return "add " + " ".join(map(str, terms)), str(sum(terms))


def _rev(rng: random.Random, tier: int) -> tuple[str, str]:
    w = random_word(rng, *_LENGTHS[tier])
    return f"rev {w}", w[::-1]


def _sort(rng: random.Random, tier: int) -> tuple[str, str]:
    w = random_word(rng, *_LENGTHS[tier])
    return f"sort {w}", "".join(sorted(w))


def _count(rng: random.Random, tier: int) -> tuple[str, str]:
    w = random_word(rng, *_COUNT_LENGTHS[tier], alphabet="abc")
    c = rng.choice("abc")
    return f"count {c} {w}", str(w.count(c))


def _shift(rng: random.Random, tier: int) -> tuple[str, str]:
    w = random_word(rng, *_LENGTHS[tier])
    return f"shift {w}", "".join(LETTERS[(LETTERS.index(ch) + 1) % 26] for ch in w)


def _max(rng: random.Random, tier: int) -> tuple[str, str]:
    w = random_word(rng, *_LENGTHS[tier], alphabet=string.digits)
    return f"max {w}", max(w)


GENERATORS: dict[str, Callable[[random.Random, int], tuple[str, str]]] = {
    "add": _add,
    "rev": _rev,
    "sort": _sort,
    "count": _count,
    "shift": _shift,
    "max": _max,
}


def sample(rng: random.Random, family: str, tier: int, split: Split) -> Example:
    """One example of ``family`` at ``tier`` whose prompt belongs to ``split``."""
    for _ in range(10_000):
        body, answer = GENERATORS[family](rng, tier)
        prompt = body + "="
        if split_of(prompt) == split:
            return Example(family, tier, prompt, answer)
    raise RuntimeError(f"no {split} prompt for {family} tier {tier} in 10000 tries")


def dataset(
    split: Split, per_cell: int, seed: int, families: tuple[str, ...] = FAMILIES
) -> list[Example]:
    """A fixed evaluation set: ``per_cell`` distinct examples for every (family, tier)."""
    rng = random.Random(f"{seed}:{split}")
    out: list[Example] = []
    for family in families:
        for tier in TIERS:
            seen: set[str] = set()
            for _ in range(per_cell * 20):
                if len(seen) == per_cell:
                    break
                ex = sample(rng, family, tier, split)
                if ex.prompt not in seen:
                    seen.add(ex.prompt)
                    out.append(ex)
    return out


def stream(
    seed: int,
    families: tuple[str, ...],
    split: Split = "train",
    tiers: tuple[int, ...] = TIERS,
) -> Iterator[Example]:
    """An endless, seeded stream of training examples: families uniform, ``tiers`` weighted as
    in TIER_WEIGHTS."""
    rng = random.Random(f"{seed}:{split}:stream")
    weights = [w for t, w in zip(TIERS, TIER_WEIGHTS, strict=True) if t in tiers]
    chosen = [t for t in TIERS if t in tiers]
    if not chosen:
        raise ValueError(f"no tier of {TIERS} in {tiers}")
    while True:
        tier = rng.choices(chosen, weights=weights)[0]
        yield sample(rng, rng.choice(families), tier, split)


def noise_prompts(rng: random.Random, n: int) -> list[str]:
    """Prompts with made-up command words, for outlier exposure in distillation.

    The proxy is taught to spread its probability over such prompts' answers, so that a command
    it has never seen (like the held-out family) gives low confidence. Words that name a real
    family, the held-out one included, are never produced.
    """
    out: list[str] = []
    while len(out) < n:
        cmd = random_word(rng, 2, 6)
        if cmd in FAMILIES:
            continue
        args = [
            random_word(rng, 1, 8, alphabet=rng.choice([LETTERS, string.digits]))
            for _ in range(rng.randint(1, 2))
        ]
        out.append(f"{cmd} {' '.join(args)}=")
    return out


def score(example: Example, output: str) -> bool:
    """Exact match."""
    return output == example.answer
