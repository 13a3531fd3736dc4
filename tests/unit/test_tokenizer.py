"""The byte tokenizer and its spec."""

from __future__ import annotations

import pytest

from shared.tokenizer import ByteTokenizer, Tokenizer, TokenizerSpecError, tokenizer_from_spec

TEXTS = ["", "add 12 34=46", "héllo wörld", "emoji 🙂 and 中文", "\x00\x7f\n\t", "a" * 500]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trips(text: str) -> None:
    """Any text survives encode then decode, with and without BOS."""
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_bos_comes_first_and_specials_are_dropped_by_decode() -> None:
    """BOS leads the ids; PAD, BOS and EOS vanish when decoding."""
    tok = ByteTokenizer()
    ids = tok.encode("ab")
    assert ids == [tok.bos_id, 97, 98]
    assert tok.decode([tok.pad_id, *ids, tok.eos_id]) == "ab"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_matches_whole_decode(text: str) -> None:
    """Pushing tokens one at a time yields the same text, never half a character."""
    tok = ByteTokenizer()
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_spec_round_trips_and_satisfies_protocol() -> None:
    """The spec rebuilds the tokenizer, which meets the Tokenizer protocol."""
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tokenizer_from_spec(tok.spec()).spec() == tok.spec()


@pytest.mark.parametrize("spec", [{"kind": "bpe"}, {}, {**ByteTokenizer().spec(), "eos_id": 1}])
def test_unknown_or_inconsistent_spec_is_refused(spec: dict[str, object]) -> None:
    """A spec this build cannot honour fails with a readable error."""
    with pytest.raises(TokenizerSpecError):
        tokenizer_from_spec(spec)
