"""One plain-text file as a language-modelling corpus, split by position (character-level tasks).

``tinyshakespeare.txt`` with the byte tokenizer is the classic character-level benchmark: the
file is cut into contiguous train / valid / test parts by position (default 90 / 5 / 5 %, the
fractions of the *characters*), so no passage leaks between splits. Every token of the valid
and test parts is evaluated (the last block padded); training blocks are non-overlapping and
reshuffled each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.base import PackedDataset, SplitTokenDataModule
from datamodules.tokenizers import build_tokenizer
from lhp.errors import UserError

SPLITS = ("train", "val", "test")


class TextFileDataModule(SplitTokenDataModule):
    """Packed next-token blocks of one text file, split by position.

    Args:
        path: the UTF-8 text file.
        split: fractions of the characters for train, val and test, in file order (sum 1).
        tokenizer: tokenizer spec (default ``{"kind": "byte"}``: characters of an ASCII file).
        block_size / batch_size: tokens per example, examples per batch.
        seed: seed of the training order (a pure function of seed and epoch).
    """

    def __init__(self, path: str, split: Sequence[float] = (0.9, 0.05, 0.05),
                 tokenizer: dict[str, Any] | None = None, block_size: int = 128,
                 batch_size: int = 32, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        super().__init__()
        if isinstance(tokenizer, DictConfig):
            tokenizer = OmegaConf.to_container(tokenizer, resolve=True)
        split = list(split) if isinstance(split, ListConfig | tuple | list) else split
        for key, value in (("block_size", block_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"data.{key} must be a positive int, got {value!r}")
        if (not isinstance(split, list) or len(split) != 3
                or not all(isinstance(f, int | float) and not isinstance(f, bool) and f > 0
                           for f in split)
                or abs(sum(split) - 1.0) > 1e-6):
            raise UserError(f"data.split must be three positive fractions (train, val, test) "
                            f"summing to 1, got {split!r}")
        self.save_hyperparameters(logger=False)
        self.path = Path(path)
        self.tokenizer = build_tokenizer(tokenizer or {"kind": "byte"})
        self.block_size, self.batch_size = block_size, batch_size
        self.splits: dict[str, PackedDataset] = {}

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"data.path: {self.path} does not exist") from None
        except IsADirectoryError:
            raise UserError(f"data.path: {self.path} is a directory, expected a text file") from None
        except UnicodeDecodeError as err:
            raise UserError(f"data.path: {self.path} is not UTF-8 text (byte {err.start}: "
                            f"{err.reason})") from None

    def split_texts(self) -> dict[str, str]:
        """The file's train / val / test parts (by character position)."""
        text = self._read()
        cut1 = round(len(text) * self.hparams.split[0])
        cut2 = cut1 + round(len(text) * self.hparams.split[1])
        return dict(zip(SPLITS, (text[:cut1], text[cut1:cut2], text[cut2:]), strict=True))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for name, text in self.split_texts().items():
            ids = self.tokenizer.encode(text)
            if len(ids) < self.block_size + 1:
                raise UserError(
                    f"data.path: the {name} part of {self.path} has {len(ids)} tokens, fewer than "
                    f"one block of data.block_size+1={self.block_size + 1}: use a longer file, "
                    "a smaller data.block_size or other data.split fractions")
            tokens = torch.tensor(ids, dtype=torch.int32)
            self.splits[name] = PackedDataset(tokens, self.block_size,
                                              None if name == "train" else self.tokenizer.pad_id)
