"""Export of the proxy to ONNX with KV-cache inputs and outputs, and its int8 variant.

The graph follows the decoder convention that other exporters (Hugging Face Optimum, onnxruntime-
genai) use, so a decoder exported by them runs on the same edge runner:

    inputs:  input_ids [B, T] int64, attention_mask [B, S] int64, position_ids [B, T] int64,
             past_key_values.<i>.key / .value [B, n_head, S - T, head_dim] float32
    outputs: logits [B, T, vocab] float32, present.<i>.key / .value [B, n_head, S, head_dim]

The first step passes a zero-length past.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import cast

import torch
from torch import nn

from cloud.model.gpt import GPT, Block, attention_bias
from shared.pack.manifest import DecoderIO


class _LeanDecoder(nn.Module):
    """The model's forward rewritten for a short ONNX graph: same weights, same outputs (to float
    rounding), about half the kernels per call. For a proxy this small the kernel count is what
    a decode step costs on a CPU: each kernel's fixed cost is about that of its arithmetic.

    - Rotary embedding without slicing and re-interleaving: rotating the interleaved pairs
      (2i, 2i + 1) of each head is ``t * cos + (t @ R) * sin`` with a fixed signed permutation
      R, and ``t @ R`` folds into the projection weights. One matmul per layer yields q and k
      side by side, their rotated copies, and v; q and k turn together; the angles are computed
      once per call for every layer.
    - Activations kept as [B*T, C] between the attention cores, so that every linear layer is
      one Gemm (matmul and bias in one kernel) instead of a MatMul and an Add.
    - Reshapes to and from heads take the batch and length from ``input_ids``, the same tensor
      in every layer, so ONNX Runtime computes that shape once per call.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model
        self.blocks = [cast(Block, b) for b in model.h]  # typed access; registered via model
        cfg = model.cfg
        C, nh = cfg.n_embd, cfg.n_head
        hd = C // nh
        self.n_head, self.head_dim = nh, hd
        pair = torch.arange(2 * C) % hd // 2  # the rotary frequency index of each q, k channel
        self.freq: torch.Tensor
        self.register_buffer("freq", self.blocks[0].attn.inv_freq[pair].clone(), persistent=False)
        rot = torch.zeros(C, C)  # (t @ rot)[2i] = -t[2i + 1], (t @ rot)[2i + 1] = t[2i]
        even = torch.arange(0, C, 2)
        rot[even + 1, even], rot[even, even + 1] = -1.0, 1.0
        self.qkv = nn.ModuleList()
        for block in self.blocks:
            weight, bias = block.attn.c_attn.weight, block.attn.c_attn.bias  # [3C, C], [3C]
            wq, wk, wv = weight.split(C)
            bq, bk, bv = bias.split(C)
            fused = nn.Linear(C, 5 * C)  # q, k | q @ rot, k @ rot | v
            with torch.no_grad():
                fused.weight.copy_(torch.cat([wq, wk, rot.T @ wq, rot.T @ wk, wv]))
                fused.bias.copy_(torch.cat([bq, bk, bq @ rot, bk @ rot, bv]))
            self.qkv.append(fused)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past_flat: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        m, nh, hd = self.model, self.n_head, self.head_dim
        C = nh * hd
        B, T = input_ids.shape[0], input_ids.shape[1]
        bias = attention_bias(attention_mask, T, m.wte.weight.dtype)
        angle = (position_ids.unsqueeze(-1).float() * self.freq).reshape(-1, 2 * C)
        cos, sin = angle.cos(), angle.sin()  # [B*T, 2C]
        scale = 1.0 / math.sqrt(hd)
        x = (m.wte(input_ids) + m.wpe(position_ids)).reshape(-1, C)  # [B*T, C]
        presents: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            qkv = cast(nn.Linear, self.qkv[i])
            qk, qk_rot, v = qkv(block.ln_1(x)).split([2 * C, 2 * C, C], dim=1)
            # [B*T, 2C] -> [B, T, 2 * nh, hd] -> [B, 2 * nh, T, hd]: q's heads, then k's
            qk = (qk * cos + qk_rot * sin).reshape(B, T, 2 * nh, hd).transpose(1, 2)
            q, k = qk.split(nh, dim=1)
            k = torch.cat([past_flat[2 * i], k], dim=2)
            v = torch.cat([past_flat[2 * i + 1], v.reshape(B, T, nh, hd).transpose(1, 2)], dim=2)
            att = torch.softmax((q @ k.transpose(-2, -1)) * scale + bias, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(-1, C)  # [B*T, C]
            x = x + block.attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
            presents += [k, v]
        return (m.lm_head(m.ln_f(x)).reshape(B, T, -1), *presents)


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
            _LeanDecoder(model),
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

    # The quantiser logs a line per tensor (and advice for static quantisation) on the *root*
    # logger; the build's own log would drown in it, so the root logger shows errors only here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8
        )
    finally:
        root.setLevel(level)
