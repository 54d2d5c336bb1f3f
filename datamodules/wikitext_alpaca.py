"""WikiText + Alpaca mixing datamodule (the real-text setup every token architecture shares).

Text corpus (WikiText-style lines) is packed into blocks; instruction records are formatted as
Alpaca prompts, truncated/padded to one block with an attention mask (optionally the loss on
the response only). Validation/test sets stay separate per corpus (``val/wiki_*``,
``val/alpaca_*``; ``val/loss`` is their mean). The tokenized corpus is cached on disk, keyed by
tokenizer + data config + source content, and reused by later runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules import tokenizers
from datamodules.base import PackedDataset, TokenDataModule
from datamodules.corpora import alpaca_splits, fingerprint, wiki_lines
from datamodules.files import open_regular, write_atomic
from datamodules.jsonl import format_record
from lhp.config_check import to_plain
from lhp.errors import UserError

log = logging.getLogger(__name__)
RESPONSE_TAG = "### Response:\n"
CACHE_VERSION = 2


class InstructionDataset(Dataset):
    """Alpaca examples: ``ids`` (N, block+1) padded rows; loss on tokens from ``loss_start``."""

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor, loss_start: torch.Tensor) -> None:
        self.ids, self.lengths, self.loss_start = ids, lengths, loss_start

    def __len__(self) -> int:
        return self.ids.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row, n = self.ids[i].long(), int(self.lengths[i])
        input_ids, labels = row[:-1].clone(), row[1:].clone()
        positions = torch.arange(labels.numel())
        labels[(positions >= n - 1) | (positions < int(self.loss_start[i]) - 1)] = -100
        mask = (positions < n - 1).long()
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


class MixedDataset(Dataset):
    """Training examples from several datasets, addressed by one flat index."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = torch.tensor([0] + [len(p) for p in self.parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        part = int(torch.searchsorted(self.offsets, i, right=True)) - 1
        return self.parts[part][i - int(self.offsets[part])]


class WikiTextAlpacaDataModule(TokenDataModule):
    """Args:
        wiki: text corpus source (``path`` to a dir with train/valid/test.txt, or ``hub_id`` +
            ``hub_config``), ``max_samples`` (training lines; null = all) and ``word_level``
            (report word-level perplexity: tokenized WikiText only). null disables the corpus.
        alpaca: instruction source (``paths`` to .json/.jsonl files, or ``hub_id``),
            ``max_samples`` (training records; null = all), ``val_fraction``/``test_fraction``,
            ``split_seed``, ``response_only_loss``. null disables the corpus.
        mix_ratio: fraction of training examples drawn from alpaca (null: use both as sized).
        tokenizer: ``{kind: byte}``, ``{kind: bpe, vocab_size: N}`` (trained once per corpus and
            vocab size, shared by every experiment on the corpus), ``{kind: pretrained, path: ...}``.
    """

    def __init__(
        self,
        wiki: Mapping[str, Any] | None = None,
        alpaca: Mapping[str, Any] | None = None,
        mix_ratio: float | None = None,
        tokenizer: Mapping[str, Any] | None = None,
        block_size: int = 128,
        batch_size: int = 32,
        seed: int = 0,
        cache_dir: str = "data/cache",
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        wiki, alpaca, tokenizer = to_plain(wiki), to_plain(alpaca), to_plain(tokenizer)
        if not wiki and not alpaca:
            raise UserError("data.wiki and data.alpaca are both null: enable at least one corpus")
        if mix_ratio is not None and not (wiki and alpaca and 0.0 < mix_ratio < 1.0):
            raise UserError(f"data.mix_ratio must be in (0, 1) with both corpora enabled, got {mix_ratio}")
        for key, value in (("block_size", block_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"data.{key} must be a positive int, got {value!r}")
        self.save_hyperparameters(logger=False)
        self.wiki, self.alpaca = wiki, alpaca
        self.block_size, self.batch_size = block_size, batch_size
        self.eval_set_names = [n for n, src in (("wiki", wiki), ("alpaca", alpaca)) if src]
        self.eval_set_stats: dict[str, dict[str, int]] = {}
        # null-valued keys are unset ones (e.g. vocab_size left over from a merged config)
        self._tokenizer_spec = tokenizers.check_spec(
            {k: v for k, v in (tokenizer or {"kind": "byte"}).items() if v is not None})
        self._tokenizer = None
        self._texts: dict[str, Any] | None = None
        self._data: dict[str, torch.Tensor] | None = None

    # ----------------------------------------------------------------- sources
    def _raw(self) -> dict[str, Any]:
        """Raw text of every enabled split (read once)."""
        if self._texts is None:
            texts: dict[str, Any] = {}
            if self.wiki:
                for split in ("train", "val", "test"):
                    lines = wiki_lines(self.wiki, split)
                    if split == "train" and self.wiki.get("max_samples"):
                        lines = lines[: self.wiki["max_samples"]]
                    texts[f"wiki_{split}"] = lines
            if self.alpaca:
                splits = alpaca_splits(self.alpaca, self.alpaca.get("val_fraction", 0.1),
                                       self.alpaca.get("test_fraction", 0.1),
                                       self.alpaca.get("split_seed", 0))
                if self.alpaca.get("max_samples"):
                    splits["train"] = splits["train"][: self.alpaca["max_samples"]]
                for split, records in splits.items():
                    texts[f"alpaca_{split}"] = records
            self._texts = texts
        return self._texts

    def _training_texts(self) -> list[str]:
        raw = self._raw()
        return raw.get("wiki_train", []) + [format_record(r) for r in raw.get("alpaca_train", [])]

    @property
    def tokenizer(self) -> Any:
        """Built on first use; a BPE spec without ``json`` is trained (or reused) here."""
        if self._tokenizer is None:
            spec = self._tokenizer_spec
            if spec.get("kind") == "bpe" and "json" not in spec:
                if "vocab_size" not in spec:
                    raise UserError("data.tokenizer.vocab_size is missing: a BPE tokenizer "
                                    "(data.tokenizer.kind=bpe) is trained to this size; set it, "
                                    "e.g. data.tokenizer.vocab_size=8192")
                key = fingerprint(self._training_texts())
                cache = Path(self.hparams.cache_dir) / "tokenizers"
                self._tokenizer, _ = tokenizers.get_or_train_bpe(self._training_texts, key,
                                                                 spec["vocab_size"], cache)
            else:
                self._tokenizer = tokenizers.build_tokenizer(spec)
        return self._tokenizer

    # -------------------------------------------------------------- tokenizing
    def _cache_key(self) -> str:
        hp = self.hparams
        return fingerprint(CACHE_VERSION, self.tokenizer.to_dict(), self.wiki, self.alpaca,
                           hp.block_size, self._source_fingerprint())

    def _source_fingerprint(self) -> str:
        raw = self._raw()
        return fingerprint(*(raw[k] for k in sorted(raw)))

    def _tokenize_all(self) -> dict[str, torch.Tensor]:
        raw, tok, data = self._raw(), self.tokenizer, {}
        dtype = torch.int32
        for split in ("train", "val", "test"):
            if f"wiki_{split}" in raw:
                lines = raw[f"wiki_{split}"]
                ids: list[int] = []
                for row in tok.encode_batch(lines):
                    ids.extend(row)
                    ids.append(tok.eos_id)
                data[f"wiki_{split}"] = torch.tensor(ids, dtype=dtype)
                # word-level convention: whitespace-separated tokens + one <eos> per line
                data[f"wiki_{split}_words"] = torch.tensor(sum(len(x.split()) + 1 for x in lines))
            if f"alpaca_{split}" in raw:
                data.update(self._tokenize_instructions(raw[f"alpaca_{split}"], f"alpaca_{split}"))
        return data

    def _tokenize_instructions(self, records: list[dict], name: str) -> dict[str, torch.Tensor]:
        """Rows ``prompt + "### Response:\n" + response + <eos>`` cut to one block.

        A prompt too long to leave room is cut (keeping its beginning and the response tag) so
        that at least half the block holds the response; else truncation could leave no
        response tokens at all, and nothing to learn with ``response_only_loss``.
        """
        tok, width = self.tokenizer, self.block_size + 1
        heads, responses = [], []
        for rec in records:
            full = format_record(rec)
            cut = full.rindex(RESPONSE_TAG)
            heads.append(full[:cut])
            responses.append(full[cut + len(RESPONSE_TAG):])
        tag = tok.encode(RESPONSE_TAG)
        ids = torch.full((len(records), width), tok.pad_id, dtype=torch.int32)
        lengths = torch.zeros(len(records), dtype=torch.int32)
        starts = torch.zeros(len(records), dtype=torch.int32)
        for i, (h, r) in enumerate(zip(tok.encode_batch(heads), tok.encode_batch(responses),
                                       strict=True)):
            r = r + [tok.eos_id]
            keep = min(len(h), max(width // 2 - len(tag), width - len(tag) - len(r)))
            prompt = h[: max(keep, 0)] + tag
            row = (prompt + r)[:width]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
            lengths[i], starts[i] = len(row), min(len(prompt), width)
        return {f"{name}_ids": ids, f"{name}_lengths": lengths, f"{name}_starts": starts}

    def _cache_problem(self, blob: Any, key: str) -> str | None:
        """Why a loaded cache cannot be used (None: it can): another key, or not the tensors
        ``_tokenize_all`` makes for this config (names, shapes, integer token ids within the
        vocabulary), which would otherwise crash training later."""
        if not isinstance(blob, dict) or not isinstance(blob.get("data"), dict):
            return "not a {'key', 'data'} dict"
        if blob.get("key") != key:
            return "key mismatch"
        data, raw = blob["data"], self._raw()
        n = {name: len(raw[name]) for name in raw if name.startswith("alpaca_")}
        shapes: dict[str, tuple[int | None, ...]] = {}  # None: any size
        for name in raw:
            if name.startswith("wiki_"):
                shapes.update({name: (None,), f"{name}_words": ()})
            else:
                shapes.update({f"{name}_ids": (n[name], self.block_size + 1),
                               f"{name}_lengths": (n[name],), f"{name}_starts": (n[name],)})
        if set(data) != set(shapes):
            return f"tensors {sorted(data)}, expected {sorted(shapes)}"
        for name, shape in shapes.items():
            t = data[name]
            if (not torch.is_tensor(t) or t.dtype.is_floating_point or t.dtype.is_complex
                    or t.dim() != len(shape)
                    or any(want not in (None, got) for want, got in zip(shape, t.shape, strict=True))):
                return f"{name!r} is not an integer tensor of shape {shape} (None: any size)"
            is_ids = name.startswith("wiki_") and not name.endswith("_words") or name.endswith("_ids")
            if is_ids and t.numel() and not (int(t.min()) >= 0 and int(t.max()) < self.tokenizer.vocab_size):
                return f"{name!r} has token ids outside the vocabulary"
        return None

    def _read_cache(self, path: Path, key: str) -> dict[str, torch.Tensor] | None:
        """The tokenized corpus cached at ``path``, or None when there is none or it is stale,
        truncated or garbled (one warning naming the file; the caller rebuilds it)."""
        if not os.path.lexists(path):
            return None
        try:
            with open_regular(path, "a tokenized-corpus cache file (torch.save)") as fh:
                blob = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated/garbled: torch raises many types (EOF, zip, pickle)
            problem: str | None = f"unreadable: {type(err).__name__}: {' '.join(str(err).split())}"
        else:
            problem = self._cache_problem(blob, key)
        if problem is None:
            return blob["data"]
        log.warning(f"Tokenized cache {path} is stale or corrupt ({problem}); rebuilding it")
        return None

    def _load_or_build(self) -> dict[str, torch.Tensor]:
        key = self._cache_key()
        path = Path(self.hparams.cache_dir) / f"tokenized-{key}.pt"
        data = self._read_cache(path, key)
        if data is not None:
            print(f"Using tokenized cache {path}")
            return data
        data = self._tokenize_all()
        # atomic: a killed run never leaves a half-written cache under the real name
        write_atomic(path, lambda fh: torch.save({"key": key, "data": data}, fh))
        print(f"Tokenized corpus written to cache {path}")
        return data

    # ------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self._data is not None:
            return
        self._data = data = self._load_or_build()
        if "wiki_val" in data and self.wiki.get("word_level", True):
            for split in ("val", "test"):
                self.eval_set_stats.setdefault(split, {})["wiki"] = {
                    "words": int(data[f"wiki_{split}_words"]),
                    "targets": data[f"wiki_{split}"].numel() - 1,
                }
        self._train = self._build_train(data)

    def _instructions(self, data: Mapping[str, torch.Tensor], split: str) -> InstructionDataset:
        name = f"alpaca_{split}"
        starts = data[f"{name}_starts"]
        if not self.alpaca.get("response_only_loss", False):
            starts = torch.zeros_like(starts)
        return InstructionDataset(data[f"{name}_ids"], data[f"{name}_lengths"], starts)

    def _build_train(self, data: Mapping[str, torch.Tensor]) -> MixedDataset:
        wiki = PackedDataset(data["wiki_train"], self.block_size) if "wiki_train" in data else None
        alpaca = self._instructions(data, "train") if "alpaca_train_ids" in data else None
        ratio = self.hparams.mix_ratio
        if ratio is not None:
            n_w, n_a = len(wiki), len(alpaca)
            want_a = round(ratio / (1 - ratio) * n_w)
            g = torch.Generator().manual_seed(self.hparams.seed)
            if want_a <= n_a:
                keep = torch.randperm(n_a, generator=g)[:want_a]
                alpaca = InstructionDataset(alpaca.ids[keep], alpaca.lengths[keep],
                                            alpaca.loss_start[keep])
            else:
                n_keep = round(n_a * (1 - ratio) / ratio)
                start = int(torch.randint(0, n_w - n_keep + 1, (1,), generator=g))
                # a contiguous run of blocks keeps the packed text coherent
                blocks = data["wiki_train"][start * self.block_size :
                                            (start + n_keep) * self.block_size + 1]
                wiki = PackedDataset(blocks, self.block_size)
        parts = [p for p in (wiki, alpaca) if p is not None]
        log.info("Training examples: " + ", ".join(f"{type(p).__name__}={len(p)}" for p in parts))
        return MixedDataset(parts)

    def train_dataset(self) -> MixedDataset:
        return self._train

    def eval_datasets(self, stage: str) -> list[Dataset]:
        sets = []
        if self.wiki:
            sets.append(PackedDataset(self._data[f"wiki_{stage}"], self.block_size,
                                      pad_id=self.tokenizer.pad_id))
        if self.alpaca:
            sets.append(self._instructions(self._data, stage))
        return sets

    # ---------------------------------------------------- count-based baselines
    def train_tokens(self) -> torch.Tensor:
        return self._data["wiki_train"] if "wiki_train" in self._data else torch.zeros(0)

    def val_tokens(self) -> torch.Tensor:
        return self._data["wiki_val"] if "wiki_val" in self._data else torch.zeros(0)
