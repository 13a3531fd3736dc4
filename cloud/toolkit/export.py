"""Export of the proxy to ONNX with KV-cache inputs and outputs, and its int8 variant.

The graph follows the decoder convention that other exporters (Hugging Face Optimum, onnxruntime-
genai) use, so a decoder exported by them runs on the same edge runner:

    inputs:  input_ids [B, T] int64, attention_mask [B, S] int64, position_ids [B, T] int64,
             past_key_values.<i>.key / .value [B, n_head, S - T, head_dim] float32
    outputs: logits [B, T, vocab] float32, present.<i>.key / .value [B, n_head, S, head_dim]

The first step passes a zero-length past.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from cloud.toolkit.model import GPT
from shared.pack import DecoderIO


class _FlatDecoder(nn.Module):
    """The model with flat tensor arguments, as an ONNX graph wants them."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past_flat: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = self.model(input_ids, attention_mask, position_ids, past)
        return (logits, *[t for kv in presents for t in kv])


def io_names(n_layer: int, io: DecoderIO | None = None) -> tuple[list[str], list[str]]:
    io = io or DecoderIO()
    inputs = [io.input_ids, io.attention_mask, io.position_ids]
    outputs = [io.logits]
    for i in range(n_layer):
        inputs += [io.past_key.format(i=i), io.past_value.format(i=i)]
        outputs += [io.present_key.format(i=i), io.present_value.format(i=i)]
    return inputs, outputs


def export_onnx(model: GPT, path: Path, opset: int = 17) -> None:
    """Write ``model`` as an ONNX decoder with dynamic batch, sequence and past lengths."""
    model.eval()
    cfg = model.cfg
    hd = cfg.n_embd // cfg.n_head
    B, T, P = 2, 3, 4  # example sizes; none may be 0 or 1, which the tracer would specialise on
    ids = torch.ones((B, T), dtype=torch.long)
    mask = torch.ones((B, P + T), dtype=torch.long)
    pos = torch.arange(P, P + T).unsqueeze(0).expand(B, T).contiguous()
    past = [torch.zeros((B, cfg.n_head, P, hd)) for _ in range(2 * cfg.n_layer)]
    in_names, out_names = io_names(cfg.n_layer)
    axes: dict[str, dict[int, str]] = {
        in_names[0]: {0: "batch", 1: "sequence"},
        in_names[1]: {0: "batch", 1: "total_sequence"},
        in_names[2]: {0: "batch", 1: "sequence"},
        out_names[0]: {0: "batch", 1: "sequence"},
    }
    for name in in_names[3:]:
        axes[name] = {0: "batch", 2: "past_sequence"}
    for name in out_names[1:]:
        axes[name] = {0: "batch", 2: "total_sequence"}
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated in favour of dynamo; it is
        # the one that turns this small model into a plain, fixed-opset graph without surprises.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _FlatDecoder(model),
            (ids, mask, pos, *past),
            str(path),
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights only (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8
    )
