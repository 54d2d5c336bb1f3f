"""Tokenizers and their registry.

A tokenizer is described by a small JSON-able spec (``{"kind": "byte"}``) that is stored in
checkpoints, so evaluation and generation rebuild exactly the tokenizer a model was trained with.
New kinds (BPE, pretrained) register in ``TOKENIZERS`` and implement the ``Tokenizer`` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable


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


TOKENIZERS: dict[str, type] = {"byte": ByteTokenizer}


def build_tokenizer(spec: Mapping[str, Any]) -> Tokenizer:
    """Build a tokenizer from its spec, e.g. ``{"kind": "byte"}`` (a dict or a DictConfig).

    Keys other than ``kind`` are passed to the tokenizer's constructor.
    """
    if not hasattr(spec, "keys") or "kind" not in spec:
        raise ValueError(
            f"tokenizer spec must be a mapping with a 'kind' key, got {spec!r}; "
            f"known kinds: {', '.join(sorted(TOKENIZERS))}"
        )
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise ValueError(
            f"unknown tokenizer kind {kind!r}; known kinds: {', '.join(sorted(TOKENIZERS))}"
        )
    kwargs = {str(k): spec[k] for k in spec if k != "kind"}
    return TOKENIZERS[kind](**kwargs)
