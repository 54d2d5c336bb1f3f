"""Books as coordinate data: every character of a UTF-8 text -> (x = i/(N-1), character id).

Coordinate batches are dicts ``coords`` (float64, B), ``targets`` (long, B), ``book_id``
(long, B). Coordinates are float64: with millions of characters the spacing 1/(N-1) is below
float32's resolution near 1 and the highest Fourier frequency (~pi N) multiplies any rounding
error (see ``lit_models/archs/fractal.py``). Training draws random positions (a seeded
permutation per epoch over every character of every book, resumable mid-epoch); evaluation
sweeps every book in order, so validation is the full-book reconstruction check. This is
deliberate memorization: validation and test are the same sweep.

The character vocabulary is index 0 = unknown, then the sorted characters of the books (or a
frozen ``charset`` given by a trained core, shared by every book of an atlas). A character
outside a frozen vocabulary is an error naming file, line and column (``unknown="error"``), or
maps to id 0 and is counted (``unknown="unk"``; such a book cannot be reconstructed exactly).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import ListConfig
from torch.utils.data import Dataset

from datamodules.base import IGNORE_INDEX, ResumableDataLoader, loader_generator, rank_sampler
from datamodules.files import DataFormatError, read_text
from lhp.errors import UserError

log = logging.getLogger(__name__)
UNKNOWN_ID = 0
UNKNOWN_POLICIES = ("error", "unk")


class CharVocab:
    """Characters <-> ids; id 0 is reserved for characters outside the vocabulary."""

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise UserError(f"charset entries must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise UserError("charset has duplicate characters")
        self.chars = chars
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> CharVocab:
        return cls(sorted(set().union(*map(set, texts))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    @property
    def vocab_size(self) -> int:
        return len(self)

    def hash(self) -> str:
        """sha256 of the character list: cores and keys refer to their vocabulary by it."""
        return charset_hash(self.chars)

    def encode(self, text: str, unknown: str = "error", where: str = "<text>") -> torch.Tensor:
        """Character ids (int64) of ``text``; unknown characters per the ``unknown`` policy."""
        if unknown not in UNKNOWN_POLICIES:
            raise UserError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        ids = [self.index.get(c, UNKNOWN_ID) for c in text]
        if unknown == "error" and UNKNOWN_ID in ids:
            pos = ids.index(UNKNOWN_ID)
            line = text.count("\n", 0, pos) + 1
            col = pos - (text.rfind("\n", 0, pos) + 1) + 1
            missing = sorted(set(text) - set(self.index))
            raise UserError(
                f"{where}:{line}:{col}: character {text[pos]!r} is not in the frozen vocabulary "
                f"({len(missing)} unknown character(s): {''.join(missing)[:40]!r}); use a core "
                "trained with these characters, or unknown='unk' to map them to id 0")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor | Sequence[int], unknown_char: str = "\ufffd") -> str:
        table = [unknown_char, *self.chars]
        return "".join(table[i] for i in (ids.tolist() if torch.is_tensor(ids) else ids))


def charset_hash(chars: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(chars), ensure_ascii=True).encode()).hexdigest()


def read_book(path: str | Path, max_chars: int | None = None) -> str:
    """A UTF-8 book (or its first ``max_chars`` characters), exactly as on disk (no newline
    translation). Missing, special (FIFO, directory, device), empty and non-UTF-8 files are
    ``DataFormatError`` (a ``UserError``) naming the file."""
    path = Path(path)
    text = read_text(path, "a UTF-8 text file (a book; see data.books)")
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the book
    if max_chars is not None:
        text = text[:max_chars]
    if not text:
        raise DataFormatError(f"{path}: empty book (nothing to learn); expected a UTF-8 text "
                              "file with at least one character")
    return text


def positions(n_chars: int) -> torch.Tensor:
    """``x_i = i / (N - 1)`` in float64 (x = 0 for a one-character book)."""
    return torch.arange(n_chars, dtype=torch.float64) / max(n_chars - 1, 1)


def position_index(x: torch.Tensor, n_chars: int) -> torch.Tensor:
    """Inverse of ``positions``: the character index (int64) nearest to each coordinate ``x``
    in [0, 1] of an ``n_chars``-character book (clamped to the book)."""
    return torch.round(x * max(n_chars - 1, 1)).long().clamp(0, max(n_chars - 1, 0))


def _identity(batch: Any) -> Any:
    return batch


class CoordinateDataset(Dataset):
    """Every (book, position) pair; ``__getitems__`` gathers a whole batch at once."""

    def __init__(self, texts_ids: Sequence[torch.Tensor]) -> None:
        self.coords = torch.cat([positions(len(t)) for t in texts_ids])
        self.targets = torch.cat(list(texts_ids))
        self.book_id = torch.cat([torch.full((len(t),), b, dtype=torch.long)
                                  for b, t in enumerate(texts_ids)])

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Indices past the end (evaluation padding on several ranks, ``ResumableSampler``)
        give position 0 with target ``IGNORE_INDEX``: counted nowhere."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        pad = idx >= len(self)
        idx = idx.masked_fill(pad, 0)
        return {"coords": self.coords[idx], "targets": self.targets[idx].masked_fill(pad, IGNORE_INDEX),
                "book_id": self.book_id[idx]}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


class BookCoordsDataModule(L.LightningDataModule):
    """Coordinate batches over one or more books (``book_id`` = index in ``books``).

    Args:
        books: UTF-8 text file path(s).
        titles: a title per book (default: the file stem).
        max_chars: use only the first ``max_chars`` characters of each book (null: whole);
            a list gives one limit per book.
        charset: frozen vocabulary (list of characters, as saved with a core); null builds it
            from the books.
        charset_books: more text files whose characters join the built vocabulary (a core
            meant to take these books later as keys; not trained on).
        unknown: ``"error"`` or ``"unk"`` for characters outside a frozen ``charset``.
        batch_size: random positions per training batch.
        eval_batch_size: positions per batch of the ordered evaluation sweep.
        seed: seed of the training order (a pure function of seed and epoch).
    """

    def __init__(
        self,
        books: str | Sequence[str],
        titles: Sequence[str] | None = None,
        max_chars: int | Sequence[int | None] | None = None,
        charset: Sequence[str] | None = None,
        charset_books: Sequence[str] | None = None,
        unknown: str = "error",
        batch_size: int = 1024,
        eval_batch_size: int = 8192,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        books = [books] if isinstance(books, str) else list(books or [])
        if not books:
            raise UserError("data.books: give at least one UTF-8 text file")
        titles = list(titles) if isinstance(titles, list | tuple | ListConfig) else titles
        if titles is not None and len(titles) != len(books):
            raise UserError(f"data.titles has {len(titles)} entries for {len(books)} books")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"data.{key} must be a positive int, got {value!r}")
        limits = list(max_chars) if isinstance(max_chars, list | tuple | ListConfig) else [max_chars] * len(books)
        if len(limits) != len(books) or any(
                m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0) for m in limits):
            raise UserError(f"data.max_chars must be a positive int, null, or a list of those with "
                            f"one entry per book ({len(books)}), got {max_chars!r}")
        if unknown not in UNKNOWN_POLICIES:
            raise UserError(f"data.unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        self.save_hyperparameters(logger=False)
        self.paths = [Path(b) for b in books]
        self.titles = [str(t) for t in titles] if titles is not None else [p.stem for p in self.paths]
        self.texts = [read_book(p, m) for p, m in zip(self.paths, limits, strict=True)]
        if charset is not None and charset_books:
            raise UserError("data.charset (a frozen vocabulary) and data.charset_books exclude each other")
        extra = [read_book(b) for b in ([charset_books] if isinstance(charset_books, str) else charset_books or [])]
        self.vocab = CharVocab(list(charset)) if charset is not None else CharVocab.from_texts(self.texts + extra)
        self.ids = [self.vocab.encode(t, unknown, str(p)) for t, p in zip(self.texts, self.paths, strict=True)]
        self.unknown_counts = [int((i == UNKNOWN_ID).sum()) for i in self.ids]
        for path, n in zip(self.paths, self.unknown_counts, strict=True):
            if n:
                log.warning(f"{path}: {n} character(s) outside the vocabulary mapped to id 0; "
                            "this book cannot be reconstructed exactly")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.dataset = CoordinateDataset(self.ids)

    # what the model and the atlas read
    @property
    def vocab_size(self) -> int:
        return self.vocab.vocab_size

    @property
    def charset(self) -> list[str]:
        return list(self.vocab.chars)

    @property
    def num_books(self) -> int:
        return len(self.texts)

    @property
    def book_lengths(self) -> list[int]:
        return [len(t) for t in self.texts]

    def _loader(self, shuffle: bool) -> ResumableDataLoader:
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        sampler = rank_sampler(self.trainer, len(self.dataset), self.hparams.seed, shuffle)
        return ResumableDataLoader(
            self.dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
            collate_fn=_identity, num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory, generator=loader_generator(self.hparams.seed),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self._loader(shuffle=False)

    def test_dataloader(self) -> ResumableDataLoader:
        return self._loader(shuffle=False)
