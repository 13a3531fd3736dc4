"""The edge runner and the loaded proxy on the quick pack: sampling, stops, thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.proxy import Proxy, load_proxy
from shared.pack import PackError
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
