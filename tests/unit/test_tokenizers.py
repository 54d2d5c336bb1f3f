"""Tokenizers: byte, trained BPE (and its shared cache file), pretrained, and the registry."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as RawTokenizer

from datamodules.tokenizers import (
    TOKENIZERS,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    build_tokenizer,
    check_vocab,
    get_or_train_bpe,
    load_pretrained,
    train_bpe,
)
from lhp.errors import UserError

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
    with pytest.raises(UserError, match=r"data.tokenizer.kind='wordpiece' is not a tokenizer kind; "
                       r"valid kinds: bpe, byte, pretrained"):
        build_tokenizer({"kind": "wordpiece"})


def test_build_without_kind() -> None:
    with pytest.raises(UserError, match=r"data.tokenizer.kind is missing"):
        build_tokenizer({})


@pytest.mark.parametrize(("spec", "key", "valid"), [
    ({"kind": "byte", "vocab_size": 8192}, "vocab_size", "none"),
    ({"kind": "bpe", "vocab_size": 400, "path": "x"}, "path", "json, vocab_size, eos_token"),
    ({"kind": "pretrained", "path": "x", "merges": 3}, "merges", "json, path, eos_token"),
], ids=["byte+vocab_size", "bpe+path", "pretrained+merges"])
def test_build_rejects_keys_of_another_kind(spec: dict, key: str, valid: str) -> None:
    """`data.tokenizer.kind=byte` over a BPE config: name the stray key, not a TypeError."""
    with pytest.raises(UserError, match=rf"data.tokenizer.{key} is not valid for "
                       rf"data.tokenizer.kind={spec['kind']} \(valid keys besides kind: {valid}"):
        build_tokenizer(spec)


# --------------------------------------------------------------------------- Hugging Face
WORDS = ["the", "cat", "sat", "on", "mat", "of", "and", "in", "to", "a", "was", "for", "is",
         "that", "with", "as", "by", "he", "at", "from", "his", "it", "an", "were", "are",
         "which", "this", "also", "be", "has", "or", "had", "first", "one", "their", "its", "new",
         "after", "but", "who", "not", "they", "have", "her", "she", "two", "been", "other",
         "when", "there", "all", "during", "into", "school", "time"]


def corpus(n: int = 400) -> list[str]:
    """WikiText-style lines (tokenized, ``@-@``, ``<unk>``) plus some non-ASCII and code."""
    lines = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(8 + i % 9)]
        line = " " + " ".join(words) + f" {1900 + i % 120} @-@ <unk> , naïve café . \n"
        if i % 5 == 0:
            line = f" = = Section {i} = = \n"
        if i % 11 == 0:
            line = " 東京 の 猫 — “quoted” 🙂 é ü ß \n"
        if i % 17 == 0:
            line = "echo ${HOME} ${x} && f(${y}) \n"
        lines.append(line)
    return lines


TRAIN = corpus()
BPE_TEXTS = [
    "hello, world!",
    " the cat @-@ <unk> . \n",
    " = = Valkyria Chronicles III = = \n",
    "naïve café — 東京 🙂 𝔘𝔫𝔦",
    "emoji 🙂 and\ttabs\nnewlines\r\n",
    "literal specials <eos> <pad> </s> stay text",
    "control \x00\x01\x7f bytes and ${HOME}",
    "  leading and trailing spaces  ",
    "",
]


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe(TRAIN, 400)


@pytest.mark.parametrize("text", BPE_TEXTS)
def test_bpe_round_trip(bpe: HFTokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.eos_id not in ids and bpe.pad_id not in ids
    assert bpe.decode(ids) == text


def test_bpe_compresses_training_like_text(bpe: HFTokenizer) -> None:
    line = TRAIN[1]
    assert len(bpe.encode(line)) < len(line.encode("utf-8")) / 2


def test_bpe_specials_and_vocab(bpe: HFTokenizer) -> None:
    raw = bpe.hf_tokenizer
    assert 258 < bpe.vocab_size <= 400
    assert (bpe.eos_id, bpe.pad_id) == (raw.token_to_id("<eos>"), raw.token_to_id("<pad>"))
    assert bpe.eos_id != bpe.pad_id
    assert isinstance(bpe, Tokenizer)
    ids = [bpe.pad_id, *bpe.encode("ab"), bpe.eos_id, bpe.pad_id, *bpe.encode("é"), bpe.eos_id]
    assert bpe.decode(ids) == "ab\né\n"


@pytest.mark.parametrize("bad", [400, -1, 10**6])
def test_bpe_decode_out_of_vocab_raises(bpe: HFTokenizer, bad: int) -> None:
    with pytest.raises(ValueError, match=rf"token id {bad} "):
        bpe.decode([65, bad])


@pytest.mark.parametrize("text", BPE_TEXTS)
def test_bpe_char_counts_give_character_count(bpe: HFTokenizer, text: str) -> None:
    counts = bpe.token_char_counts()
    assert len(counts) == bpe.vocab_size
    assert counts[bpe.eos_id] == 1 and counts[bpe.pad_id] == 0
    assert sum(counts[i] for i in bpe.encode(text)) == len(text)
    stream = bpe.encode(text) + [bpe.eos_id] + bpe.encode(text) + [bpe.eos_id, bpe.pad_id]
    assert sum(counts[i] for i in stream) == 2 * len(text) + 2 == len(bpe.decode(stream))


@pytest.mark.parametrize("tok", [ByteTokenizer(), "bpe"], ids=["byte", "bpe"])
def test_encode_batch_matches_encode(tok: object, bpe: HFTokenizer) -> None:
    tok = bpe if tok == "bpe" else tok
    assert tok.encode_batch(BPE_TEXTS) == [tok.encode(t) for t in BPE_TEXTS]
    assert tok.encode_batch(iter(BPE_TEXTS[:2])) == [tok.encode(t) for t in BPE_TEXTS[:2]]
    assert tok.encode_batch([]) == []


def test_bpe_to_dict_rebuilds_identical_tokenizer(bpe: HFTokenizer) -> None:
    spec = bpe.to_dict()
    assert spec["kind"] == "bpe" and spec["eos_token"] == "<eos>"
    assert spec["vocab_size"] == bpe.vocab_size
    assert "${" not in spec["json"]  # safe to pass through OmegaConf/Hydra (no interpolation)
    spec = json.loads(json.dumps(spec))  # JSON-able, as stored in a checkpoint
    rebuilt = build_tokenizer(spec)
    assert rebuilt == bpe and hash(rebuilt) == hash(bpe) and rebuilt.to_dict() == bpe.to_dict()
    assert rebuilt.encode_batch(BPE_TEXTS + TRAIN[:50]) == bpe.encode_batch(BPE_TEXTS + TRAIN[:50])
    assert rebuilt.token_char_counts() == bpe.token_char_counts()
    assert "vocab_size=" in repr(bpe) and len(repr(bpe)) < 200


def test_bpe_spec_through_dictconfig(bpe: HFTokenizer) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    assert bpe.hf_tokenizer.token_to_id("${") is not None  # the corpus makes "${" a token
    cfg = omegaconf.OmegaConf.create({"tokenizer": bpe.to_dict()})
    assert build_tokenizer(cfg.tokenizer) == bpe
    assert build_tokenizer(omegaconf.OmegaConf.to_container(cfg.tokenizer, resolve=True)) == bpe


def test_bpe_training_is_deterministic(bpe: HFTokenizer) -> None:
    assert train_bpe(iter(TRAIN), 400) == bpe


@pytest.mark.parametrize("bad", [258, 100, 0, "512", 300.0, True])
def test_train_bpe_rejects_bad_vocab_size(bad: object) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(TRAIN, bad)  # type: ignore[arg-type]


def test_train_bpe_rejects_empty_corpus() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe([], 300)


def test_build_untrained_bpe_spec_says_datamodule_trains_it() -> None:
    with pytest.raises(ValueError, match="datamodule must train it first"):
        build_tokenizer({"kind": "bpe", "vocab_size": 512})


def test_build_spec_vocab_size_mismatch(bpe: HFTokenizer) -> None:
    with pytest.raises(ValueError, match="vocab_size=123"):
        build_tokenizer({**bpe.to_dict(), "vocab_size": 123})


def test_build_corrupt_json_spec() -> None:
    with pytest.raises(UserError, match=r"bpe tokenizer JSON:1: invalid JSON \(.* at column 2\)"):
        build_tokenizer({"kind": "bpe", "json": "{not json"})


@pytest.mark.parametrize(("content", "pattern"), [
    (b'{"version": "1.0", "model": {"type": "BPE", "vocab"', r":1: invalid JSON \(.*column"),
    (b"[1, 2]", r": not a valid Hugging Face tokenizer JSON \(not a JSON object\)"),
    (b'{"version": "1.0"}', r": not a valid Hugging Face tokenizer JSON \(wrong schema"),
    (b'{"added_tokens": "caf\xe9"}', r":1: not UTF-8 text \(byte 0xe9 at byte offset 21\)"),
], ids=["truncated", "not-an-object", "wrong-schema", "latin-1"])
def test_bad_tokenizer_file_names_the_file(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    for load in (lambda: load_pretrained(tmp_path),
                 lambda: build_tokenizer({"kind": "pretrained", "path": str(path)})):
        with pytest.raises(UserError, match=re.escape(str(path)) + pattern):
            load()


# --------------------------------------------------------------------------- shared cache file
class Texts:
    """A ``texts_fn`` that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[str]:
        self.calls += 1
        return TRAIN


def test_get_or_train_bpe_trains_once_then_reuses(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="datamodules.tokenizers")
    texts, cache = Texts(), tmp_path / "cache" / "tokenizers"
    tok, path = get_or_train_bpe(texts, "abc123", 400, cache)
    assert path == cache / "bpe-abc123-v400.json" and path.is_file()
    assert texts.calls == 1
    assert any("Trained" in r.message and str(path) in r.message for r in caplog.records)
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temp file left behind
    # a standard tokenizer.json: loadable by Hugging Face tokenizers on its own
    assert RawTokenizer.from_file(str(path)).encode("the cat").ids == tok.encode("the cat")

    mtime = path.stat().st_mtime_ns
    caplog.clear()
    again, path2 = get_or_train_bpe(texts, "abc123", 400, cache)
    assert texts.calls == 1 and path2 == path and path.stat().st_mtime_ns == mtime
    assert any("Using cached" in r.message and str(path) in r.message for r in caplog.records)
    assert again == tok and again.encode_batch(BPE_TEXTS) == tok.encode_batch(BPE_TEXTS)

    other, other_path = get_or_train_bpe(texts, "abc123", 300, cache)  # another vocab size
    assert texts.calls == 2 and other_path.name == "bpe-abc123-v300.json"
    assert other.vocab_size <= 300 < tok.vocab_size


@pytest.mark.parametrize("content", ["", "{trunc", '{"version": "1.0"}', "\udcff"],
                         ids=["empty", "truncated", "not-a-tokenizer", "not-utf8"])
def test_get_or_train_bpe_recovers_from_corrupt_cache(tmp_path: Path, content: str,
                                                      caplog: pytest.LogCaptureFixture,
                                                      bpe: HFTokenizer) -> None:
    path = tmp_path / "bpe-key-v400.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    texts = Texts()
    tok, got = get_or_train_bpe(texts, "key", 400, tmp_path)
    assert got == path and texts.calls == 1 and tok == bpe
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in r.message and "corrupt" in r.message for r in warnings)
    assert load_pretrained(path).hf_tokenizer.to_str() == bpe.hf_tokenizer.to_str()  # rewritten
    assert get_or_train_bpe(texts, "key", 400, tmp_path)[0] == bpe and texts.calls == 1


def test_get_or_train_bpe_retrains_a_foreign_tokenizer(tmp_path: Path) -> None:
    """A valid tokenizer.json that is not this kind of BPE (no <pad>) is not used."""
    path = tmp_path / "bpe-key-v400.json"
    path.write_text(_sentencepiece_style("llama").to_str(), encoding="utf-8")
    texts = Texts()
    assert get_or_train_bpe(texts, "key", 400, tmp_path)[0].pad_id != 2 and texts.calls == 1


@pytest.mark.parametrize("key", ["", "../up", "a/b", ".hidden", "-x", "sp ace", "x" * 200])
def test_get_or_train_bpe_rejects_unsafe_corpus_key(tmp_path: Path, key: str) -> None:
    texts = Texts()
    with pytest.raises(ValueError, match="corpus_key"):
        get_or_train_bpe(texts, key, 400, tmp_path)
    assert texts.calls == 0 and not any(tmp_path.iterdir())


def test_get_or_train_bpe_rejects_bad_vocab_size_before_training(tmp_path: Path) -> None:
    texts = Texts()
    with pytest.raises(ValueError, match="vocab_size"):
        get_or_train_bpe(texts, "key", 256, tmp_path)
    assert texts.calls == 0


# --------------------------------------------------------------------------- pretrained
SP_TRAIN = [f"the cat number {i} sat on the mat, naïve café and more text\n" for i in range(200)]


def _sentencepiece_style(style: str) -> RawTokenizer:
    """A small SentencePiece-like BPE as in Llama/TinyLlama: ``<unk>``, ``<s>``, ``</s>``, then
    256 ``<0xNN>`` byte-fallback tokens, then learned pieces with ``▁`` for a space."""
    base = RawTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    base.train_from_iterator(SP_TRAIN, trainers.BpeTrainer(vocab_size=150, show_progress=False))
    learned = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = RawTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                  byte_fallback=True, fuse_unk=True))
    if style == "llama":  # tokenizer.json as converted from Llama's SentencePiece model
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:  # the Metaspace pre-tokenizer variant
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        # (no Fuse here: a Metaspace decoder after Fuse drops every space)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(prepend_scheme="first")])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    return tok


@pytest.fixture(params=["llama", "metaspace"])
def sp_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    model_dir = tmp_path / "TinyLlama-like"
    model_dir.mkdir()
    _sentencepiece_style(request.param).save(str(model_dir / "tokenizer.json"), pretty=True)
    (model_dir / "config.json").write_text("{}")
    return model_dir


SP_TEXTS = ["the cat sat on the mat", "naïve café", "東京 🙂 x\ty and ẞ", "a  b\nc",
            "literal </s> and <s> stay text", "new words zebra quokka"]


def test_pretrained_sentencepiece_style(sp_dir: Path) -> None:
    tok = load_pretrained(sp_dir)
    assert tok.kind == "pretrained" and isinstance(tok, Tokenizer)
    assert tok.vocab_size == tok.hf_tokenizer.get_vocab_size()
    assert tok.eos_token == "</s>" and tok.eos_id == 2
    assert tok.pad_id == tok.eos_id  # no <pad>: padding uses eos
    counts = tok.token_char_counts()
    assert counts[2] == 1 and counts[0] == counts[1] == 0
    assert counts[3 + ord("x")] == 1 and counts[3 + 0xE6] == 1 and counts[3 + 0x9D] == 0
    for text in SP_TEXTS:
        ids = tok.encode(text)
        assert tok.eos_id not in ids and 0 not in ids  # byte fallback: no <unk>
        assert tok.decode(ids) == text
        # the ▁ prepended to a text counts as a space that decoding strips
        assert sum(counts[i] for i in ids) == len(text) + 1
    stream = tok.encode(SP_TEXTS[0]) + [tok.eos_id] + tok.encode(SP_TEXTS[1]) + [tok.eos_id]
    assert tok.decode(stream) == f"{SP_TEXTS[0]}\n{SP_TEXTS[1]}\n"
    assert tok.encode_batch(SP_TEXTS) == [tok.encode(t) for t in SP_TEXTS]


def test_pretrained_from_file_path_and_config_spec(sp_dir: Path) -> None:
    from_dir = load_pretrained(sp_dir)
    assert load_pretrained(sp_dir / "tokenizer.json") == from_dir
    from_cfg = build_tokenizer({"kind": "pretrained", "path": str(sp_dir), "eos_token": None})
    assert from_cfg == from_dir


def test_pretrained_to_dict_is_self_contained(sp_dir: Path) -> None:
    tok = load_pretrained(sp_dir)
    spec = json.loads(json.dumps(tok.to_dict()))
    assert spec["kind"] == "pretrained" and spec["eos_token"] == "</s>"
    assert spec["source"] == str(sp_dir / "tokenizer.json")
    (sp_dir / "tokenizer.json").unlink()  # the checkpoint must not need the file
    rebuilt = build_tokenizer(spec)
    assert rebuilt == tok and rebuilt.encode_batch(SP_TEXTS) == tok.encode_batch(SP_TEXTS)


def test_pretrained_eos_token_override(sp_dir: Path) -> None:
    assert load_pretrained(sp_dir, eos_token="<s>").eos_id == 1
    with pytest.raises(ValueError, match=r"tokenizer\.json: eos_token '<nope>'"):
        load_pretrained(sp_dir, eos_token="<nope>")


def test_pretrained_byte_level_with_endoftext(tmp_path: Path) -> None:
    """GPT-2 style: byte-level BPE whose end-of-text token is ``<|endoftext|>``."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TRAIN, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = load_pretrained(tmp_path)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_id == tok.eos_id
    counts = tok.token_char_counts()
    for text in BPE_TEXTS:
        assert tok.decode(tok.encode(text)) == text
        assert sum(counts[i] for i in tok.encode(text)) == len(text)


def test_pretrained_without_eos_candidate(tmp_path: Path) -> None:
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(TRAIN[:20], trainers.BpeTrainer(
        vocab_size=270, special_tokens=["[SEP]"], show_progress=False))
    raw.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer\.json.*</s>.*<\|endoftext\|>.*<eos>"):
        load_pretrained(tmp_path)
    assert load_pretrained(tmp_path, eos_token="[SEP]").eos_token == "[SEP]"


def test_pretrained_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(UserError, match=r"no-such-model.*data.tokenizer.path.*tokenizer\.json"):
        load_pretrained(missing)
    with pytest.raises(UserError, match="no-such-model"):
        build_tokenizer({"kind": "pretrained", "path": str(missing)})


def test_pretrained_dir_without_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(UserError, match=rf"{tmp_path.name}.*tokenizer\.model"):
        load_pretrained(tmp_path)


def test_pretrained_spec_needs_path_or_json() -> None:
    with pytest.raises(ValueError, match="'path'"):
        build_tokenizer({"kind": "pretrained", "eos_token": None})


# --------------------------------------------------------------------------- vocab check
def test_check_vocab(bpe: HFTokenizer) -> None:
    check_vocab(bpe, bpe.vocab_size, "ckpt.ckpt")
    check_vocab(ByteTokenizer(), 512, "ckpt.ckpt")
    with pytest.raises(ValueError, match=r"runs/x/last\.ckpt.*258.*larger.*100"):
        check_vocab(ByteTokenizer(), 100, "runs/x/last.ckpt")
    with pytest.raises(ValueError, match="best.ckpt"):
        check_vocab(bpe, 258, "best.ckpt")
