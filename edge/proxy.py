"""The proxy the daemon runs: a verified pack loaded into ONNX Runtime, and hot swapping it.

A :class:`Proxy` is everything one pack version needs at request time: the decoder session, the
tokenizer and the calibration table that turns routing targets into a threshold. It is immutable
once loaded. :class:`ProxyHolder` keeps the current one; a swap loads and self-tests the new pack
beside the old one and then switches one reference under a lock, so a request that already took
the old proxy finishes on it (nothing is unloaded while referenced: Python frees the old session
when its last request lets go).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.runner import OnnxDecoder
from shared.pack.manifest import Manifest, PackError, open_pack
from shared.routing import CalibrationTable
from shared.settings.edge import OnnxSettings, RoutingSettings
from shared.tokenizer import ByteTokenizer, TokenizerSpecError, tokenizer_from_spec

log = logging.getLogger(__name__)

SELF_TEST_PROMPT = "self test"


@dataclass(frozen=True)
class Proxy:
    """One loaded pack version."""

    pack_dir: Path
    manifest: Manifest
    decoder: OnnxDecoder
    tokenizer: ByteTokenizer
    calibration: CalibrationTable
    precision: str  # "fp32" or "int8": the variant really loaded

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def label(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    @property
    def max_new_tokens(self) -> int:
        """The longest answer the proxy is trusted to write (the pack's routing limit)."""
        return self.manifest.routing.max_new_tokens

    def threshold(self, routing: RoutingSettings) -> float:
        """The confidence threshold the routing settings ask for, with this pack's table."""
        if routing.threshold is not None:
            return routing.threshold
        if routing.target_max_escalation is not None:
            return self.calibration.for_max_escalation(routing.target_max_escalation).threshold
        if routing.target_min_accuracy_share is not None:
            share = routing.target_min_accuracy_share
            return self.calibration.for_min_accuracy_share(share).threshold
        return self.manifest.routing.default_threshold

    def self_test(self) -> None:
        """Decode a short prompt; PackError when the session fails or gives non-finite logits."""
        ids = self.tokenizer.encode(SELF_TEST_PROMPT)
        try:
            n = len(ids)
            logits, _ = self.decoder.forward(
                np.asarray([ids], dtype=np.int64),
                np.ones((1, n), dtype=np.int64),
                np.arange(n, dtype=np.int64)[None],
                self.decoder.empty_past(),
            )
            result = self.decoder.generate(ids, min(4, self.decoder.context_limit - n))
        except Exception as exc:  # any failure of a new model refuses it
            raise PackError(f"pack {self.label}: self-test failed: {exc}") from exc
        if logits.shape[-1] != self.tokenizer.vocab_size or not np.isfinite(logits).all():
            raise PackError(
                f"pack {self.label}: self-test failed: logits of shape {logits.shape} "
                f"(vocabulary {self.tokenizer.vocab_size}) or not finite"
            )
        if any(not 0 <= t < self.tokenizer.vocab_size for t in result.token_ids):
            raise PackError(f"pack {self.label}: self-test produced token ids out of range")


def load_proxy(pack_dir: Path, onnx: OnnxSettings, state_dir: Path) -> Proxy:
    """Open and verify a pack, load its proxy and self-test it; PackError says what is wrong."""
    pack_dir = Path(pack_dir).resolve()
    manifest = open_pack(pack_dir)  # sizes and sha256 of every file
    try:
        tokenizer = tokenizer_from_spec(json.loads((pack_dir / manifest.tokenizer).read_text()))
        calibration = CalibrationTable.model_validate_json(
            (pack_dir / manifest.calibration).read_text()
        )
    except (OSError, ValueError, TokenizerSpecError) as exc:
        raise PackError(f"pack {pack_dir}: {exc}") from None
    int8 = onnx.precision == "int8" and manifest.proxy.onnx_int8 is not None
    if onnx.precision == "int8" and not int8:
        log.warning("pack %s has no int8 proxy; running fp32", pack_dir)
    try:
        decoder = OnnxDecoder.from_pack(
            pack_dir,
            manifest,
            tokenizer.eos_id,
            int8=int8,
            providers=tuple(onnx.providers),
            intra_op_threads=onnx.intra_op_threads,
            inter_op_threads=onnx.inter_op_threads or 1,
            trt_cache_dir=onnx.trt_cache_dir or state_dir / "trt-cache",
        )
    except Exception as exc:  # ONNX Runtime has its own types
        raise PackError(f"pack {pack_dir}: cannot load the proxy: {exc}") from None
    proxy = Proxy(pack_dir, manifest, decoder, tokenizer, calibration, "int8" if int8 else "fp32")
    proxy.self_test()
    return proxy


class ProxyHolder:
    """The current proxy, replaced atomically by :meth:`swap`."""

    def __init__(self, proxy: Proxy) -> None:
        self._current = proxy
        self._lock = threading.Lock()  # one swap at a time; readers take the reference as is

    @property
    def current(self) -> Proxy:
        return self._current

    def swap(self, new: Proxy) -> Proxy:
        """Make ``new`` current; returns the previous proxy."""
        with self._lock:
            old, self._current = self._current, new
        log.info("proxy swapped: %s -> %s (%s)", old.label, new.label, new.precision)
        return old

    async def load_and_swap(self, pack_dir: Path, onnx: OnnxSettings, state_dir: Path) -> Proxy:
        """Load and self-test ``pack_dir`` in a worker thread, then swap; the old proxy keeps
        serving meanwhile and stays current when anything fails (PackError)."""
        new = await asyncio.to_thread(load_proxy, pack_dir, onnx, state_dir)
        self.swap(new)
        return new
