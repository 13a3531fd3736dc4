"""Preallocated KV cache: one slot per running sequence, written in place.

Each layer has a key and a value tensor ``[slots, n_head, context, head_dim]``. A sequence takes
a free slot at its prefill and gives it back when it finishes; its tokens occupy columns
``0 .. cache_len - 1`` of its slot. A decode step gathers the running slots' columns up to the
longest length with one indexed read per layer (shorter rows are masked beyond their length) and
writes every row's new key and value with one indexed write per layer, so the cost no longer
grows with a Python loop over sequences. Columns past a sequence's length may hold a former
occupant's values: the attention mask never lets a query see them.
"""

from __future__ import annotations

import torch

from cloud.model.gpt import KV


class SlotCache:
    def __init__(
        self, n_layer: int, n_head: int, head_dim: int, context: int, slots: int,
        device: torch.device, dtype: torch.dtype,
    ) -> None:  # fmt: skip
        shape = (slots, n_head, context, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self._free = list(range(slots - 1, -1, -1))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self) -> int:
        assert self._free, "more running sequences than cache slots"
        return self._free.pop()

    def release(self, slot: int) -> None:
        assert slot not in self._free, f"slot {slot} released twice"
        self._free.append(slot)

    def gather(self, slots: torch.Tensor, length: int) -> list[KV]:
        """Columns ``0 .. length - 1`` of ``slots``: per layer ``[len(slots), nh, length, hd]``."""
        return [
            (k[slots, :, :length], v[slots, :, :length])
            for k, v in zip(self.k, self.v, strict=True)
        ]

    def write_prefix(self, slot: int, presents: list[KV], row: int, cols: slice) -> None:
        """Store ``presents[layer][.][row, :, cols]`` as the slot's first columns."""
        n = cols.stop - cols.start
        for layer, (pk, pv) in enumerate(presents):
            self.k[layer][slot, :, :n] = pk[row, :, cols]
            self.v[layer][slot, :, :n] = pv[row, :, cols]

    def write_column(
        self, slots: torch.Tensor, at: torch.Tensor, presents: list[KV], col: int
    ) -> None:
        """For every row i: column ``at[i]`` of slot ``slots[i]`` = ``presents[.][i, :, col]``."""
        for layer, (pk, pv) in enumerate(presents):
            self.k[layer][slots, :, at] = pk[:, :, col]
            self.v[layer][slots, :, at] = pv[:, :, col]
