"""Saving and loading model weights as safetensors (never pickle) with their architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from cloud.model.gpt import GPT, GPTConfig


def save(model: GPT, path: Path) -> None:
    save_model(model, str(path))  # handles the tied embedding / lm_head weights


def load(path: Path, config: dict[str, Any], device: str | torch.device = "cpu") -> GPT:
    model = GPT(GPTConfig(**config))
    missing, unexpected = load_model(model, str(path), strict=True, device=str(device))
    assert not missing and not unexpected, f"{path}: missing {missing}, unexpected {unexpected}"
    return model.to(device).eval()
