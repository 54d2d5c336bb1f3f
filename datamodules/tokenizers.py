"""Tokenizers and their registry.

A tokenizer is described by a small JSON-able spec (``{"kind": "byte"}``) that is stored in
checkpoints, so evaluation and generation rebuild exactly the tokenizer a model was trained with.
Kinds:

- ``byte``: UTF-8 bytes (``ByteTokenizer``), no training or files.
- ``bpe``: byte-level BPE trained with Hugging Face ``tokenizers`` on the experiment's corpus
  (``train_bpe``); trained once per corpus and vocab size and shared through a cache file
  (``get_or_train_bpe``, called by the datamodule, which knows the corpus).
- ``pretrained``: a Hugging Face ``tokenizer.json`` (e.g. a TinyLlama download,
  ``load_pretrained``).

BPE and pretrained tokenizers are ``HFTokenizer`` objects whose spec embeds the whole tokenizer
JSON, so a checkpoint is self-contained: ``build_tokenizer(tok.to_dict())`` needs no other file.
"""

from __future__ import annotations

import inspect
import json as jsonlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import tokenizers as hf

from datamodules.files import DataFormatError, parse_json, read_text, write_atomic
from lhp.errors import UserError

log = logging.getLogger("datamodules.tokenizers")


@runtime_checkable
class Tokenizer(Protocol):
    """Interface every tokenizer implements.

    Attributes:
        vocab_size: number of token ids; valid ids are ``0 .. vocab_size - 1``.
        eos_id: id appended after each record (end of sequence).
        pad_id: id used for padding; never produced by ``encode``, skipped by ``decode``.
    """

    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        ...

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, possibly faster."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; raises ``ValueError`` for an id outside the vocabulary."""
        ...

    def token_char_counts(self) -> list[int]:
        """Characters each id contributes to decoded text (for bits-per-character)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-able spec that ``build_tokenizer`` turns back into an equal tokenizer."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then ``<eos>`` = 256 and ``<pad>`` = 257.

    Needs no training or downloads and can encode any string, which makes it the default for
    small experiments; ``<eos>`` decodes to a newline so generated records stay readable.
    """

    vocab_size = 258
    eos_id = 256
    pad_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        for raw in ids:
            i = int(raw)
            if 0 <= i < 256:
                out.append(i)
            elif i == self.eos_id:
                out.append(0x0A)
            elif i == self.pad_id:
                continue
            else:
                raise ValueError(
                    f"token id {i} is outside the byte tokenizer's vocabulary "
                    f"(0..{self.vocab_size - 1})"
                )
        return out.decode("utf-8", errors="replace")

    def token_char_counts(self) -> list[int]:
        # A UTF-8 character has exactly one non-continuation byte (continuations are 0x80-0xBF).
        counts = [0 if 0x80 <= b <= 0xBF else 1 for b in range(256)]
        counts.append(1)  # <eos> stands for a newline
        counts.append(0)  # <pad>
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("byte")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# --------------------------------------------------------------------------- Hugging Face
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>")
BPE_EOS, BPE_PAD = "<eos>", "<pad>"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: the printable character standing for each byte
    in byte-level BPE vocabularies (``Ġ`` is a space, ``Ċ`` a newline, ...)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _char_count(data: bytes) -> int:
    # A UTF-8 character has exactly one non-continuation byte (continuations are 0x80-0xBF).
    return sum(1 for b in data if not 0x80 <= b <= 0xBF)


def _has_type(component: Any, name: str) -> bool:
    """Whether a serialized normalizer/pre-tokenizer/decoder (possibly a Sequence) has ``name``."""
    if isinstance(component, dict):
        return component.get("type") == name or any(_has_type(v, name) for v in component.values())
    if isinstance(component, list):
        return any(_has_type(v, name) for v in component)
    return False


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` behind the platform's ``Tokenizer`` protocol.

    Args:
        json: the tokenizer's JSON (``tokenizer.json`` contents / ``Tokenizer.to_str()``).
        kind: ``"bpe"`` (trained here by ``train_bpe``) or ``"pretrained"``; stored in the spec.
        eos_token: end-of-sequence token; default: the first of ``</s>``, ``<|endoftext|>``,
            ``<eos>`` in the vocabulary.
        source: where the JSON came from (a path), for error messages and provenance.

    ``encode`` adds no special tokens and treats special-token text in the input (a literal
    ``"<eos>"``) as plain text, so every string round-trips; padding/truncation settings stored
    in the JSON are switched off. ``decode`` turns ``eos_id`` into a newline (like
    ``ByteTokenizer``) and drops other special tokens. ``pad_id`` is ``<pad>`` if the
    vocabulary has it, else ``eos_id`` (then padding decodes as newlines).
    """

    def __init__(self, json: str, kind: str = "bpe", eos_token: str | None = None,
                 source: str | None = None) -> None:
        if kind not in ("bpe", "pretrained"):
            raise ValueError(f"HFTokenizer kind must be 'bpe' or 'pretrained', got {kind!r}")
        where = source or f"{kind} tokenizer JSON"
        if not isinstance(json, str):
            raise UserError(f"{where}: tokenizer JSON must be a string, got {type(json).__name__}")
        expected = "a Hugging Face tokenizer.json (Tokenizer.save / save_pretrained)"
        if not isinstance(parse_json(json, where, expected), dict):
            raise DataFormatError(f"{where}: not a valid Hugging Face tokenizer JSON (not a JSON "
                                  f"object); expected {expected}")
        try:
            tok = hf.Tokenizer.from_str(json)
        except Exception as e:  # the Rust side raises a plain Exception
            raise DataFormatError(f"{where}: not a valid Hugging Face tokenizer JSON (wrong "
                                  f"schema: {e}); expected {expected}") from None
        tok.no_padding()
        tok.no_truncation()
        tok.encode_special_tokens = True  # a literal "<eos>" in text is text, not the eos id
        self._tok, self.kind, self.source = tok, kind, source
        # Canonical form (equal tokenizers give equal specs). "$" only occurs inside JSON
        # strings, where "\u0024" is the same character: a vocabulary with "${" (code) would
        # otherwise read as an interpolation once the spec passes through OmegaConf/Hydra.
        self._json = tok.to_str().replace("$", "\\u0024")
        spec = jsonlib.loads(self._json)
        # How token strings map to bytes: "byte_level" (GPT-2 byte alphabet) or "sentencepiece"
        # (``▁`` for a space, ``<0xNN>`` byte-fallback tokens; also used for plain vocabularies).
        byte_level = any(_has_type(spec.get(k), "ByteLevel") for k in ("pre_tokenizer", "decoder"))
        self.style = "byte_level" if byte_level else "sentencepiece"

        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        if eos_token is None:
            found = [t for t in EOS_CANDIDATES if t in vocab]
            if not found:
                raise UserError(
                    f"{where}: none of the end-of-sequence tokens {list(EOS_CANDIDATES)} is in "
                    f"the vocabulary; set eos_token to this tokenizer's end-of-sequence token"
                )
            eos_token = found[0]
        elif eos_token not in vocab:
            raise UserError(f"{where}: eos_token {eos_token!r} is not in the vocabulary")
        self.eos_token = eos_token
        self.eos_id = vocab[eos_token]
        self.pad_id = vocab.get(BPE_PAD, self.eos_id)
        self._counts: list[int] | None = None

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Batch encoding in the Rust encoder (parallel, no offsets)."""
        batch = texts if isinstance(texts, list) else list(texts)
        return [e.ids for e in self._tok.encode_batch_fast(batch, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        segments: list[list[int]] = [[]]
        for raw in ids:
            i = int(raw)
            if i == self.eos_id:
                segments.append([])
            elif not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} is outside the {self.kind} tokenizer's vocabulary "
                    f"(0..{self.vocab_size - 1})"
                )
            elif i != self.pad_id:
                segments[-1].append(i)
        # each record is decoded on its own, as it was encoded (decoders strip a leading space)
        return "\n".join(self._tok.decode_batch(segments, skip_special_tokens=True))

    # ----------------------------------------------------------- char counts
    def _token_bytes(self, token: str) -> bytes:
        if self.style == "byte_level":
            table = _unicode_to_byte()
            return b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in token)
        m = _BYTE_TOKEN.fullmatch(token)
        return bytes([int(m.group(1), 16)]) if m else token.replace("▁", " ").encode("utf-8")

    def token_char_counts(self) -> list[int]:
        """Characters each id adds to decoded text: non-continuation bytes of the token's bytes;
        ``<eos>`` 1 (a newline), other special tokens 0.

        For SentencePiece-style tokenizers that prepend ``▁`` to a text (Llama), the prepended
        ``▁`` counts as a space although decoding strips it, so an encoded text sums to one
        more than its length.
        """
        if self._counts is None:
            added = self._tok.get_added_tokens_decoder()
            counts = []
            for i in range(self.vocab_size):
                token = added.get(i)
                if token is not None:
                    counts.append(0 if token.special else len(token.content))
                    continue
                piece = self._tok.id_to_token(i)
                counts.append(0 if piece is None else _char_count(self._token_bytes(piece)))
            counts[self.pad_id] = 0
            counts[self.eos_id] = 1
            self._counts = counts
        return list(self._counts)

    # ------------------------------------------------------------------- spec
    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind, "json": self._json,
                                "eos_token": self.eos_token, "vocab_size": self.vocab_size}
        if self.kind == "pretrained" and self.source is not None:
            spec["source"] = self.source  # provenance only; the JSON is what gets rebuilt
        return spec

    @property
    def hf_tokenizer(self) -> hf.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (treat as read-only)."""
        return self._tok

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, HFTokenizer) and self.kind == other.kind
                and self.eos_token == other.eos_token and self._json == other._json)

    def __hash__(self) -> int:
        return hash((self.kind, self.eos_token, self._json))

    def __repr__(self) -> str:
        where = f", source={self.source!r}" if self.source else ""
        return (f"HFTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"eos_token={self.eos_token!r}{where})")


# --------------------------------------------------------------------------- BPE training
def _check_bpe_vocab_size(vocab_size: Any) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 258:
        raise UserError(
            f"BPE vocab_size (data.tokenizer.vocab_size) must be an int > 258 (256 byte tokens + {BPE_EOS} + {BPE_PAD} "
            f"leave no room for merges otherwise), got vocab_size={vocab_size!r}"
        )
    return vocab_size


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE tokenizer with ``<eos>`` and ``<pad>`` special tokens.

    All 256 bytes are in the initial alphabet, so any string encodes without unknown tokens
    and ``decode(encode(x)) == x``. The vocabulary can come out smaller than ``vocab_size``
    when the corpus has too few distinct pairs to merge (a warning is logged).
    """
    vocab_size = _check_bpe_vocab_size(vocab_size)
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS, BPE_PAD],
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    n = 0

    def counted() -> Iterator[str]:
        nonlocal n
        for text in texts:
            n += 1
            yield text

    tok.train_from_iterator(counted(), trainer)
    if n == 0:
        raise UserError("cannot train a BPE tokenizer on an empty corpus (no texts given)")
    out = HFTokenizer(tok.to_str(), kind="bpe", eos_token=BPE_EOS)
    if out.vocab_size < vocab_size:
        log.warning(f"BPE training on {n} texts found only {out.vocab_size} tokens, fewer than "
                    f"vocab_size={vocab_size}: the corpus is too small for more merges")
    return out


def _load_cached_bpe(path: Path, vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(read_text(path, "a BPE tokenizer.json"), kind="bpe", eos_token=BPE_EOS,
                      source=str(path))
    model = tok.hf_tokenizer.model
    if not isinstance(model, hf.models.BPE) or tok.style != "byte_level":
        raise ValueError("not a byte-level BPE tokenizer")
    if tok.pad_id == tok.eos_id:
        raise ValueError(f"no {BPE_PAD} token")
    if tok.vocab_size > vocab_size:
        raise ValueError(f"vocab_size {tok.vocab_size} > the requested {vocab_size}")
    return tok


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def bpe_cache_path(cache_dir: str | os.PathLike[str], corpus_key: str, vocab_size: int) -> Path:
    """``<cache_dir>/bpe-<corpus_key>-v<vocab_size>.json``."""
    if not isinstance(corpus_key, str) or not _SAFE_KEY.fullmatch(corpus_key):
        raise ValueError(
            f"corpus_key must be a filename-safe string (letters, digits, '.', '_', '-'; at most "
            f"128 characters, not starting with '.' or '-'), got {corpus_key!r}"
        )
    return Path(cache_dir) / f"bpe-{corpus_key}-v{_check_bpe_vocab_size(vocab_size)}.json"


def get_or_train_bpe(texts_fn: Callable[[], Iterable[str]], corpus_key: str, vocab_size: int,
                     cache_dir: str | os.PathLike[str]) -> tuple[HFTokenizer, Path]:
    """The BPE tokenizer of a corpus and vocab size, shared by every experiment on the corpus.

    It lives at ``<cache_dir>/bpe-<corpus_key>-v<vocab_size>.json`` (a standard
    ``tokenizer.json``). If the file exists it is loaded; a corrupt or unusable one is reported
    and replaced. Otherwise the tokenizer is trained on ``texts_fn()`` (only called then) and
    written atomically. ``corpus_key`` identifies the training texts (e.g. a content hash).
    Returns the tokenizer and the file's path.
    """
    path = bpe_cache_path(cache_dir, corpus_key, vocab_size)
    if path.exists():
        try:
            tok = _load_cached_bpe(path, vocab_size)
        except (OSError, ValueError) as e:  # a DataFormatError names the file
            log.warning(f"BPE tokenizer cache file {path} is corrupt or unusable ({e}); "
                        f"retraining and replacing it")
        else:
            log.info(f"Using cached BPE tokenizer {path} (vocab_size={tok.vocab_size})")
            return tok, path
    tok = train_bpe(texts_fn(), vocab_size)
    _write_atomic(path, tok.to_dict()["json"])
    tok.source = str(path)
    log.info(f"Trained BPE tokenizer (vocab_size={tok.vocab_size}); wrote {path}")
    return tok, path


# --------------------------------------------------------------------------- pretrained
def load_pretrained(path: str | os.PathLike[str], eos_token: str | None = None) -> HFTokenizer:
    """A pretrained Hugging Face tokenizer from ``path``: a directory holding ``tokenizer.json``
    (e.g. a downloaded TinyLlama) or such a file itself. A missing, special (FIFO, device),
    non-UTF-8 or malformed file is a ``UserError`` naming it."""
    given = Path(path).expanduser()
    expected = "a directory containing tokenizer.json (a Hugging Face model download) or a tokenizer.json file"
    if not given.exists():
        raise UserError(f"pretrained tokenizer path {str(given)!r} (data.tokenizer.path) does "
                        f"not exist; expected {expected}")
    file = given / "tokenizer.json" if given.is_dir() else given
    if given.is_dir() and not file.exists():
        hint = ""
        if (given / "tokenizer.model").exists():
            hint = (" (it has a SentencePiece tokenizer.model, which needs converting to "
                    "tokenizer.json, e.g. with transformers' AutoTokenizer.save_pretrained)")
        raise UserError(f"no tokenizer.json in {str(given)!r}{hint}; expected {expected}")
    tok = HFTokenizer(read_text(file, expected), kind="pretrained", eos_token=eos_token,
                      source=str(file))
    log.info(f"Loaded pretrained tokenizer {file} (vocab_size={tok.vocab_size}, "
             f"eos={tok.eos_token!r})")
    return tok


# --------------------------------------------------------------------------- registry
def _check_spec_vocab(tok: HFTokenizer, vocab_size: Any) -> HFTokenizer:
    if vocab_size is not None and vocab_size != tok.vocab_size:
        raise UserError(f"tokenizer spec says vocab_size={vocab_size!r} but its JSON has "
                         f"{tok.vocab_size} tokens ({tok!r})")
    return tok


def _bpe_from_spec(json: str | None = None, vocab_size: int | None = None,
                   eos_token: str | None = None) -> HFTokenizer:
    if json is None:
        raise UserError(
            "a {'kind': 'bpe'} tokenizer spec without 'json' is not trained yet: the datamodule "
            "must train it first (get_or_train_bpe on its corpus); build_tokenizer only rebuilds "
            "a trained BPE tokenizer from its spec (e.g. a checkpoint's)"
        )
    return _check_spec_vocab(HFTokenizer(json, "bpe", eos_token or BPE_EOS), vocab_size)


def _pretrained_from_spec(json: str | None = None, path: str | None = None,
                          eos_token: str | None = None, vocab_size: int | None = None,
                          source: str | None = None) -> HFTokenizer:
    if json is not None:  # from a checkpoint: self-contained, ``path``/``source`` not read
        tok = HFTokenizer(json, "pretrained", eos_token, source=source or path)
    elif path is not None:
        tok = load_pretrained(path, eos_token)
    else:
        raise UserError("a {'kind': 'pretrained'} tokenizer spec needs 'path' (a directory "
                         "holding tokenizer.json, or the file) or 'json' (from a checkpoint)")
    return _check_spec_vocab(tok, vocab_size)


TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {
    "byte": ByteTokenizer,
    "bpe": _bpe_from_spec,
    "pretrained": _pretrained_from_spec,
}


def check_spec(spec: Mapping[str, Any], where: str = "data.tokenizer") -> dict[str, Any]:
    """``spec`` as a plain dict without null values, once its ``kind`` is known and every other
    key is an argument of that kind (else a ``UserError`` naming ``<where>.<key>``): a key
    meant for another kind (``vocab_size`` with ``kind=byte``) is a mistake, not ignored."""
    kinds = ", ".join(sorted(TOKENIZERS))
    if not hasattr(spec, "keys") or "kind" not in spec:
        raise UserError(f"{where}.kind is missing (got {spec!r}); set it to one of: {kinds}")
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise UserError(f"{where}.kind={kind!r} is not a tokenizer kind; valid kinds: {kinds}")
    args = {str(k): spec[k] for k in spec if k != "kind" and spec[k] is not None}
    valid = list(inspect.signature(TOKENIZERS[kind]).parameters)
    for key in args:
        if key not in valid:
            raise UserError(
                f"{where}.{key} is not valid for {where}.kind={kind} (valid keys besides kind: "
                f"{', '.join(valid) or 'none'}); remove it (~{where}.{key}) or set it to null")
    return {"kind": kind, **args}


def build_tokenizer(spec: Mapping[str, Any], where: str = "data.tokenizer") -> Tokenizer:
    """Build a tokenizer from its spec (a dict or a DictConfig):

    - ``{"kind": "byte"}``
    - ``{"kind": "bpe" | "pretrained", "json": ..., "eos_token": ...}`` (``to_dict()``, e.g.
      from a checkpoint)
    - ``{"kind": "pretrained", "path": ..., "eos_token": null}`` (from a config)

    Keys other than ``kind`` are passed to the kind's constructor; null values count as unset,
    and a key the kind does not take is a ``UserError`` naming ``<where>.<key>`` (``check_spec``).
    A ``bpe`` spec without ``json`` must be trained by the datamodule (``get_or_train_bpe``).
    """
    args = check_spec(spec, where)
    return TOKENIZERS[args.pop("kind")](**args)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, source: str) -> None:
    """Raise ``UserError`` naming ``source`` (e.g. a checkpoint path) when ``tokenizer`` has
    more ids than the model's embedding has rows (its ids would index past it)."""
    if tokenizer.vocab_size > model_vocab_size:
        raise UserError(
            f"{source}: tokenizer vocab_size {tokenizer.vocab_size} is larger than the model's "
            f"vocab_size {model_vocab_size}; the model was not trained with this tokenizer "
            f"({tokenizer!r})"
        )
