"""The ONNX export: the lean graph computes what the torch model computes, with no per-layer
shape arithmetic left after ONNX Runtime's optimisation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cloud.model.gpt import GPT, GPTConfig
from toolkit.export import export_onnx, io_names

SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Squeeze", "ConstantOfShape"}


def _model(n_layer: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=16, block_size=32)).eval()


def _session(model: GPT, path: Path, optimised: Path | None = None) -> ort.InferenceSession:
    export_onnx(model, path)
    options = ort.SessionOptions()
    if optimised is not None:
        options.optimized_model_filepath = str(optimised)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("past_len", [0, 5])
def test_exported_decoder_gives_the_torch_models_logits_and_cache(
    tmp_path: Path, past_len: int
) -> None:
    """Two rows, the first left-padded, with an empty or a filled cache: every output agrees."""
    model = _model()
    session = _session(model, tmp_path / "m.onnx")
    B, T, hd = 2, 4, 8
    ids = torch.randint(0, model.cfg.vocab_size, (B, T))
    mask = torch.ones((B, past_len + T), dtype=torch.long)
    mask[0, :2] = 0  # padding at the front of the first row
    pos = torch.arange(past_len, past_len + T).repeat(B, 1)
    past = [(torch.randn(B, 2, past_len, hd), torch.randn(B, 2, past_len, hd)) for _ in range(2)]
    with torch.no_grad():
        logits, presents = model(ids, mask, pos, past)
    inputs, _ = io_names(model.cfg.n_layer)
    flat = [t for kv in past for t in kv]
    feed = dict(zip(inputs, [t.numpy() for t in (ids, mask, pos, *flat)], strict=True))
    got = session.run(None, feed)
    want = [logits, *[t for kv in presents for t in kv]]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-5)


def test_optimised_graph_has_no_shape_arithmetic_per_layer(tmp_path: Path) -> None:
    """Adding layers adds compute kernels only: the shape arithmetic ONNX Runtime cannot fold
    (masks, positions) is done once per call, whatever the depth."""
    counts = []
    for n_layer in (1, 3):
        optimised = tmp_path / f"opt-{n_layer}.onnx"
        _session(_model(n_layer), tmp_path / f"m-{n_layer}.onnx", optimised)
        counts.append(Counter(n.op_type for n in onnx.load(optimised).graph.node))
    one, three = counts
    per_layer = {op: (three[op] - one[op]) / 2 for op in three | one}
    # The past is joined to the new keys and values: two Concat per layer, nothing else.
    assert {op: n for op, n in per_layer.items() if op in SHAPE_OPS and n} == {"Concat": 2}
    # About 33 kernels per layer (the export before the lean decoder ran about 65).
    assert sum(per_layer.values()) <= 36, {op: n for op, n in per_layer.items() if n}
