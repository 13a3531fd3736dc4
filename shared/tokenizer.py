"""Tokenizers behind one small interface.

The built-in models use :class:`ByteTokenizer`: every UTF-8 byte is a token, plus three special
tokens. A real tokenizer (BPE, SentencePiece) can sit behind the same :class:`Tokenizer` protocol;
a pack names its tokenizer in ``tokenizer.json`` and :func:`tokenizer_from_spec` builds it.
"""

from __future__ import annotations

import codecs
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """What the runtimes need from a tokenizer."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Text to token ids, with the BOS token first when ``add_bos``."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Token ids to text; special tokens are dropped."""
        ...

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description that :func:`tokenizer_from_spec` turns back into self."""
        ...

    def stream_decoder(self) -> IncrementalDecoder:
        """A decoder fed one token at a time; what it returns, joined and flushed, is
        :meth:`decode` of all the tokens (so streaming costs O(1) a token, not O(length))."""
        ...


class IncrementalDecoder(Protocol):
    def push(self, token_id: int) -> str:
        """The text completed by this token ('' while a character is still partial)."""
        ...

    def flush(self) -> str:
        """Whatever is left at the end, with an incomplete character replaced."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255; PAD=256, BOS=257, EOS=258."""

    kind = "byte"

    def __init__(self) -> None:
        self.pad_id = 256
        self.bos_id = 257
        self.eos_id = 258
        self.vocab_size = 259

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }

    def stream_decoder(self) -> StreamDecoder:
        """An incremental decoder for streaming: multi-byte characters come out whole."""
        return StreamDecoder()


class StreamDecoder:
    """Turns byte tokens into text one token at a time, holding back partial UTF-8 sequences."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token ('' while a character is still partial)."""
        if not 0 <= token_id < 256:
            return ""
        return self._decoder.decode(bytes([token_id]))

    def flush(self) -> str:
        """Whatever is left, with an incomplete character replaced."""
        return self._decoder.decode(b"", final=True)


class TokenizerSpecError(ValueError):
    """A tokenizer spec that no implementation here can build."""


def tokenizer_from_spec(spec: dict[str, Any]) -> ByteTokenizer:
    """Build the tokenizer a pack's ``tokenizer.json`` describes."""
    kind = spec.get("kind")
    if kind != ByteTokenizer.kind:
        raise TokenizerSpecError(f"unknown tokenizer kind {kind!r}; this build knows: 'byte'")
    tok = ByteTokenizer()
    if tok.spec() != spec:
        raise TokenizerSpecError(
            f"byte tokenizer spec {spec} does not match this build's {tok.spec()}"
        )
    return tok
