"""Shared pieces of token datamodules: packed datasets and a resumable, rank-aware loader.

Lightning restores a dataloader's position mid-epoch only if the loader implements
``state_dict``/``load_state_dict`` (its ``_Stateful`` protocol). ``ResumableDataLoader`` does,
so ``ckpt_path=...`` continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class PackedDataset(Dataset):
    """Non-overlapping blocks of a 1-D token stream: ``labels`` are ``input_ids`` shifted by one.

    Without ``pad_id`` the last partial block is dropped (training); with it, the last block is
    padded (labels -100, attention 0) so evaluation covers every token of the stream.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, pad_id: int | None = None) -> None:
        if tokens.dim() != 1:
            raise ValueError("PackedDataset expects a 1-D token stream")
        self.tokens = tokens
        self.block_size = block_size
        self.pad_id = pad_id
        n_targets = tokens.numel() - 1
        self.n_blocks = -(-n_targets // block_size) if pad_id is not None else n_targets // block_size

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = i * self.block_size
        chunk = self.tokens[start : start + self.block_size + 1].long()
        n = chunk.numel() - 1
        input_ids, labels = chunk[:-1], chunk[1:]
        mask = torch.ones(self.block_size, dtype=torch.long)
        if n < self.block_size:
            pad = self.block_size - n
            input_ids = torch.cat([input_ids, input_ids.new_full((pad,), self.pad_id)])
            labels = torch.cat([labels, labels.new_full((pad,), -100)])
            mask[n:] = 0
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

    def stream(self) -> torch.Tensor:
        """The part of the token stream these blocks cover (inputs and targets)."""
        return self.tokens[: min(self.tokens.numel(), self.n_blocks * self.block_size + 1)]


IGNORE_INDEX = -100  # a label that counts for nothing (cross-entropy's ignore_index)


class ResumableSampler(Sampler[int]):
    """Seeded permutation per epoch (a pure function of seed and epoch), sharded by rank.

    With several ranks every rank gets the same number of indices, so collective operations
    (DDP buffer syncs, FSDP all-gathers) stay in step. Training (``shuffle=True``) pads by
    repeating the first indices of the permutation: a few samples are seen twice per epoch, as
    with PyTorch's ``DistributedSampler``. Evaluation (``shuffle=False``) pads with indices past
    the end, which :class:`RankPadded` turns into samples whose every label is ignored, so each
    sample is counted exactly once across ranks.

    ``skip(n)`` makes the next iteration start after the first ``n`` indices of this rank.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        self._skip = n

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        missing = len(self) * self.world_size - len(order)  # pad so ranks stay in step
        if self.shuffle:
            order += order[:missing]
        else:
            order += range(self.num_samples, self.num_samples + missing)
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()[self._skip :]
        self._skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)


class RankPadded(Dataset):
    """An evaluation dataset plus the padding indices of :class:`ResumableSampler`: index
    ``len(base) + k`` is a copy of sample 0 with every label ``IGNORE_INDEX`` and attention 0."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < len(self.base):
            return self.base[i]
        item = dict(self.base[0])
        if "labels" not in item:
            raise TypeError(f"{type(self.base).__name__} samples have no 'labels' to ignore; "
                            "evaluation on several ranks needs them")
        item["labels"] = torch.full_like(item["labels"], IGNORE_INDEX)
        if "attention_mask" in item:
            item["attention_mask"] = torch.zeros_like(item["attention_mask"])
        return item


class ResumableDataLoader(DataLoader):
    """DataLoader that records how many batches it handed out this epoch (Lightning ``_Stateful``).

    Lightning does not prefetch from sized loaders, so the count equals batches trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_yielded = 0
        self._pending: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        start = 0
        if self._pending is not None:
            state, self._pending = self._pending, None
            if isinstance(sampler, ResumableSampler) and state["epoch"] == sampler.epoch:
                start = state["batches"]
                sampler.skip(start * self.batch_size)
            else:
                warnings.warn(
                    f"dataloader state (epoch {state['epoch']}) does not match the current epoch; "
                    "starting the epoch from its first batch",
                    stacklevel=2,
                )
        self._batches_yielded = start
        for batch in super().__iter__():
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch = getattr(self.sampler, "epoch", 0)
        return {"epoch": epoch, "batches": self._batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pending = dict(state)


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for a DataLoader, so creating its iterator never draws from the
    global RNG (which would make dropout differ between a resumed and an uninterrupted run)."""
    return torch.Generator().manual_seed(seed)


def rank_sampler(trainer: L.Trainer | None, num_samples: int, seed: int, shuffle: bool
                 ) -> ResumableSampler:
    """A :class:`ResumableSampler` for this process's rank of ``trainer`` (rank 0 of 1 without)."""
    return ResumableSampler(num_samples, seed=seed, shuffle=shuffle,
                            rank=trainer.global_rank if trainer else 0,
                            world_size=trainer.world_size if trainer else 1)


class TokenDataModule(L.LightningDataModule):
    """Loader plumbing shared by token datamodules.

    Subclasses set ``tokenizer``, ``batch_size``, ``hparams.seed/num_workers/pin_memory`` and
    implement ``train_dataset()`` and ``eval_datasets(stage)`` (one dataset per name in
    ``eval_set_names``, in that order).
    """

    eval_set_names: list[str] = [""]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def eval_datasets(self, stage: str) -> list[Dataset]:
        raise NotImplementedError

    def make_loader(self, dataset: Dataset, shuffle: bool) -> ResumableDataLoader:
        sampler = rank_sampler(self.trainer, len(dataset), self.hparams.seed, shuffle)
        return ResumableDataLoader(
            dataset if shuffle else RankPadded(dataset), batch_size=self.batch_size,
            sampler=sampler, drop_last=shuffle,
            num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory,
            generator=loader_generator(self.hparams.seed),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self.make_loader(self.train_dataset(), shuffle=True)

    def _eval_loaders(self, stage: str) -> ResumableDataLoader | list[ResumableDataLoader]:
        loaders = [self.make_loader(d, shuffle=False) for d in self.eval_datasets(stage)]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self) -> ResumableDataLoader | list[ResumableDataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> ResumableDataLoader | list[ResumableDataLoader]:
        return self._eval_loaders("test")


class SplitTokenDataModule(TokenDataModule):
    """A token datamodule whose ``setup`` fills ``self.splits`` with one ``PackedDataset`` per
    split ("train", "val", "test"): the loaders and the streams count-based baselines read."""

    splits: dict[str, PackedDataset]

    def train_tokens(self) -> torch.Tensor:
        """The packed training stream (e.g. for count-based baselines)."""
        return self.splits["train"].tokens

    def val_tokens(self) -> torch.Tensor:
        """The validation stream as evaluated (for count-based baselines)."""
        return self.splits["val"].stream()

    def train_dataset(self) -> PackedDataset:
        return self.splits["train"]

    def eval_datasets(self, stage: str) -> list[PackedDataset]:
        return [self.splits[stage]]
