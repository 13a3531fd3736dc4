"""The edge runner and the loaded proxy on the quick pack: sampling, stops, thresholds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge.proxy import Proxy, load_proxy
from shared.pack.manifest import PackError
from shared.sampling import SamplingParams, first_stop
from shared.settings.edge import OnnxSettings, RoutingSettings


@pytest.fixture(scope="module")
def proxy(quick_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Proxy:
    return load_proxy(quick_pack, OnnxSettings(), tmp_path_factory.mktemp("state"))


def _gen(proxy: Proxy, prompt: str, **kw: object) -> list[int]:
    ids = proxy.tokenizer.encode(prompt)
    return proxy.decoder.generate(ids, 12, **kw).token_ids  # type: ignore[arg-type]


def test_seeded_sampling_is_reproducible_and_seeds_differ(proxy: Proxy) -> None:
    """The same seed gives the same tokens; over several seeds the answers vary."""
    hot = SamplingParams(12, temperature=2.0, seed=3)
    assert _gen(proxy, "rev abcdef=", params=hot) == _gen(proxy, "rev abcdef=", params=hot)
    outs = {
        tuple(_gen(proxy, "rev abcdef=", params=SamplingParams(12, temperature=2.0, seed=s)))
        for s in range(6)
    }
    assert len(outs) > 1


def test_tiny_top_p_is_greedy(proxy: Proxy) -> None:
    """top_p near 0 keeps only the most likely token: the greedy answer."""
    nucleus = SamplingParams(12, temperature=1.0, top_p=1e-6, seed=1)
    assert _gen(proxy, "shift abc=", params=nucleus) == _gen(proxy, "shift abc=")


def test_should_stop_ends_decoding_at_a_stop_string(proxy: Proxy) -> None:
    """Decoding stops at the first token that completes a stop string ("stop")."""
    ids = proxy.tokenizer.encode("rev abcdef=")
    full = proxy.decoder.generate(ids, 12)
    text = proxy.tokenizer.decode(full.token_ids)
    stop = text[2:4]

    def should_stop(toks: list[int]) -> bool:
        return first_stop(proxy.tokenizer.decode(toks), [stop]) is not None

    cut = proxy.decoder.generate(ids, 12, should_stop=should_stop)
    assert cut.finished == "stop" and len(cut.token_ids) < len(full.token_ids)


def _reference_greedy(proxy: Proxy, ids: list[int], max_new: int) -> tuple[list[int], list[float]]:
    """Greedy KV-cache decoding written out with ``forward`` and fresh arrays at every step."""
    dec = proxy.decoder
    n = len(ids)
    logits, past = dec.forward(
        np.asarray([ids], dtype=np.int64),
        np.ones((1, n), dtype=np.int64),
        np.arange(n, dtype=np.int64)[None],
        dec.empty_past(),
    )
    tokens: list[int] = []
    probs: list[float] = []
    while True:
        x = logits[0, -1].astype(np.float64)
        p = np.exp(x - x.max())
        p = p / p.sum()
        tok = int(p.argmax())
        probs.append(float(p[tok]))
        if tok == dec.eos_id:
            return tokens, probs
        tokens.append(tok)
        if len(tokens) >= max_new:
            return tokens, probs
        logits, past = dec.forward(
            np.asarray([[tok]], dtype=np.int64),
            np.ones((1, n + 1), dtype=np.int64),
            np.asarray([[n]], dtype=np.int64),
            past,
        )
        n += 1


PROMPTS = ["rev abcdef=", "shift abc=", "sort qwerty=", "max 3 9 4=", "count c ccbcb="]


def test_generate_equals_step_by_step_forward_calls(proxy: Proxy) -> None:
    """generate (reused buffers, views, the present tensors fed back as they come) writes exactly
    what plain forward calls with fresh arrays write: tokens and probabilities, to the bit; and
    recomputing the whole sequence at each step (logits only) writes the same tokens."""
    dec = proxy.decoder
    for prompt in PROMPTS:
        ids = proxy.tokenizer.encode(prompt)
        max_new = dec.context_limit - len(ids)
        ref_tokens, ref_probs = _reference_greedy(proxy, ids, max_new)
        r = dec.generate(ids, max_new)
        assert (r.token_ids, r.token_probs) == (ref_tokens, ref_probs), prompt
        assert r.steps == len(ref_probs)
        full = dec.generate(ids, max_new, use_cache=False)
        assert full.token_ids == r.token_ids, prompt
        assert full.token_probs == pytest.approx(r.token_probs, abs=1e-5)
        assert (full.finished, full.steps) == (r.finished, r.steps)


def test_concurrent_generate_calls_match_sequential_ones(proxy: Proxy) -> None:
    """The decoder's shared read-only arrays and per-call buffers keep threads apart."""
    dec = proxy.decoder
    params = [SamplingParams(12), SamplingParams(12, temperature=1.5, seed=7)]
    jobs = [(p, sp) for p in PROMPTS for sp in params] * 4

    def run(job: tuple[str, SamplingParams]) -> tuple[list[int], list[float]]:
        r = dec.generate(proxy.tokenizer.encode(job[0]), 12, params=job[1])
        return r.token_ids, r.token_probs

    sequential = [run(j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, jobs)) == sequential


def test_threshold_comes_from_settings_or_the_calibration_table(proxy: Proxy) -> None:
    """An explicit threshold wins; targets pick a point of the table; default is the pack's."""
    table = proxy.calibration
    assert proxy.threshold(RoutingSettings(threshold=0.3)) == 0.3
    assert proxy.threshold(RoutingSettings()) == proxy.manifest.routing.default_threshold
    low = proxy.threshold(RoutingSettings(target_max_escalation=0.1))
    high = proxy.threshold(RoutingSettings(target_max_escalation=0.9))
    assert low <= high
    assert low == table.for_max_escalation(0.1).threshold
    share = proxy.threshold(RoutingSettings(target_min_accuracy_share=0.95))
    assert share == table.for_min_accuracy_share(0.95).threshold


def test_a_corrupt_pack_is_refused_naming_the_file(quick_pack: Path, tmp_path: Path) -> None:
    """One flipped byte in the ONNX file: PackError before anything is loaded."""
    import shutil

    copy = tmp_path / "pack"
    shutil.copytree(quick_pack.resolve(), copy)
    data = bytearray((copy / "proxy.onnx").read_bytes())
    data[100] ^= 1
    (copy / "proxy.onnx").write_bytes(bytes(data))
    with pytest.raises(PackError, match=r"proxy\.onnx"):
        load_proxy(copy, OnnxSettings(), tmp_path / "state")
