"""JSONL corpus datamodule: a user's JSONL files, or a generated mock corpus (``create_mock_data``).

Records hold ``text`` or Alpaca-style ``instruction``/``input``/``output``. Records are split
deterministically into train/val/test, tokenized, joined with ``<eos>`` and packed into blocks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.base import PackedDataset, SplitTokenDataModule
from datamodules.jsonl import format_record, read_jsonl_records, write_mock_corpus
from datamodules.tokenizers import build_tokenizer
from lhp.errors import UserError


class MockJSONLDataModule(SplitTokenDataModule):
    """Packed next-token blocks from JSONL records.

    Args:
        data_files: JSONL file path(s); ignored when ``create_mock_data`` is true.
        create_mock_data: generate a synthetic, learnable corpus at ``mock_path`` (once).
        mock_path / mock_num_records / mock_seed: where and what to generate.
        tokenizer: tokenizer spec, e.g. ``{"kind": "byte"}``.
        block_size: tokens per training example (the model's context length).
        val_fraction / test_fraction: share of records held out, split by ``split_seed``.
        seed: seed of the training order (a pure function of seed and epoch).
    """

    def __init__(
        self,
        data_files: str | Sequence[str] | None = None,
        create_mock_data: bool = False,
        mock_path: str = "data/mock/mock_corpus.jsonl",
        mock_num_records: int = 4000,
        mock_seed: int = 1234,
        tokenizer: dict[str, Any] | None = None,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(tokenizer, DictConfig):
            tokenizer = OmegaConf.to_container(tokenizer, resolve=True)
        if isinstance(data_files, ListConfig):
            data_files = list(data_files)
        if isinstance(data_files, str):
            data_files = [data_files]
        if not create_mock_data and not data_files:
            raise UserError(
                "data.data_files is empty and data.create_mock_data is false: point "
                "data.data_files at your JSONL file(s) or set data.create_mock_data=true"
            )
        for key, value in (("block_size", block_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"data.{key} must be a positive int, got {value!r}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 0.5:
                raise UserError(f"data.{key} must be in (0, 0.5), got {value!r}")
        self.save_hyperparameters(logger=False)
        self.tokenizer = build_tokenizer(tokenizer or {"kind": "byte"})
        self.block_size, self.batch_size = block_size, batch_size
        self.files = [Path(mock_path)] if create_mock_data else [Path(f) for f in data_files]
        self.eval_set_names: list[str] = [""]  # one validation/test set: metrics are val/loss etc.
        self.splits: dict[str, PackedDataset] = {}

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.create_mock_data and not Path(hp.mock_path).exists():
            write_mock_corpus(hp.mock_path, hp.mock_num_records, hp.mock_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        records = [(path, rec) for path in self.files for rec in read_jsonl_records(path)]
        order = list(range(len(records)))
        random.Random(self.hparams.split_seed).shuffle(order)
        n_test = max(1, round(len(order) * self.hparams.test_fraction))
        n_val = max(1, round(len(order) * self.hparams.val_fraction))
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val],
                 "train": order[n_test + n_val :]}
        for split, idx in parts.items():
            tokens = self._tokenize([format_record(records[i][1]) for i in sorted(idx)])
            if tokens.numel() < self.block_size + 1:
                names = ", ".join(str(f) for f in self.files)
                raise UserError(
                    f"the {split} split of {names} has {tokens.numel()} tokens, fewer than one "
                    f"block of data.block_size+1={self.block_size + 1}: add records or lower "
                    "data.block_size / change data.val_fraction and data.test_fraction"
                )
            self.splits[split] = PackedDataset(tokens, self.block_size)

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for text in texts:
            ids.extend(self.tokenizer.encode(text))
            ids.append(self.tokenizer.eos_id)
        dtype = torch.int32 if self.tokenizer.vocab_size < 2**31 else torch.int64
        return torch.tensor(ids, dtype=dtype)
