"""The runner's token choice: the greedy shortcut gives what a full softmax gives."""

from __future__ import annotations

import numpy as np

from shared.sampling import SamplingParams
from shared.sampling import pick_token as _pick
from shared.sampling import softmax as _softmax


def test_greedy_pick_is_the_argmax_with_its_softmax_probability() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 10.0, 100.0):
        for _ in range(200):
            logits = (rng.standard_normal(259) * scale).astype(np.float32)
            p = _softmax(logits)
            tok, prob = _pick(logits, SamplingParams(), rng)
            assert (tok, prob) == (int(p.argmax()), float(p[p.argmax()]))


def test_sampled_pick_reports_the_untempered_probability() -> None:
    logits = np.array([2.0, 1.0, 0.5, -1.0], dtype=np.float32)
    params = SamplingParams(temperature=1.5, top_p=0.9, seed=3)
    tok, prob = _pick(logits, params, np.random.default_rng(3))
    assert prob == float(_softmax(logits)[tok])
