"""Byte tokenizer and tokenizer registry."""

from __future__ import annotations

import json

import pytest

from datamodules.tokenizers import TOKENIZERS, ByteTokenizer, Tokenizer, build_tokenizer

TEXTS = ["hello, world!", "naïve café — 東京", "emoji 🙂 and\ttabs\nnewlines", ""]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_special_ids_and_vocab() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (258, 256, 257)
    assert isinstance(tok, Tokenizer)


def test_decode_specials() -> None:
    tok = ByteTokenizer()
    ids = [tok.pad_id, *tok.encode("ab"), tok.eos_id, tok.pad_id, *tok.encode("é"), tok.eos_id]
    assert tok.decode(ids) == "ab\né\n"


def test_decode_invalid_utf8_is_replaced() -> None:
    assert ByteTokenizer().decode([0x61, 0xFF, 0x62]) == "a\ufffdb"


@pytest.mark.parametrize("bad", [258, -1, 1000])
def test_decode_out_of_vocab_raises(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"token id {bad} "):
        ByteTokenizer().decode([65, bad])


@pytest.mark.parametrize("text", TEXTS)
def test_token_char_counts_give_character_count(text: str) -> None:
    tok = ByteTokenizer()
    counts = tok.token_char_counts()
    assert len(counts) == tok.vocab_size
    assert counts[tok.eos_id] == 1 and counts[tok.pad_id] == 0
    assert sum(counts[i] for i in tok.encode(text)) == len(text)
    stream = tok.encode(text) + [tok.eos_id] + tok.encode(text) + [tok.eos_id, tok.pad_id]
    assert sum(counts[i] for i in stream) == 2 * len(text) + 2
    assert sum(counts[i] for i in stream) == len(tok.decode(stream))


def test_build_from_dict_and_round_trip() -> None:
    tok = build_tokenizer({"kind": "byte"})
    assert isinstance(tok, ByteTokenizer)
    spec = tok.to_dict()
    assert spec == {"kind": "byte"}
    assert json.loads(json.dumps(spec)) == spec
    assert build_tokenizer(spec) == tok
    assert repr(tok) == "ByteTokenizer()"
    assert TOKENIZERS["byte"] is ByteTokenizer


def test_build_from_read_only_mapping() -> None:
    from types import MappingProxyType

    assert build_tokenizer(MappingProxyType({"kind": "byte"})) == ByteTokenizer()


def test_build_from_dictconfig() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"kind": "byte"})
    assert build_tokenizer(cfg) == ByteTokenizer()


def test_build_unknown_kind_names_kind_and_known_kinds() -> None:
    with pytest.raises(ValueError, match=r"'wordpiece'.*byte"):
        build_tokenizer({"kind": "wordpiece"})


def test_build_without_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        build_tokenizer({})
