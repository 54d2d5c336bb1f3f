"""Optimizer groups, LR schedule, bigram baseline, packing and the resumable sampler."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.base import (
    IGNORE_INDEX,
    PackedDataset,
    RankPadded,
    ResumableDataLoader,
    ResumableSampler,
)
from lit_models.archs import build_arch
from lit_models.baselines import bigram_cross_entropy
from lit_models.optim import param_groups, warmup_cosine


def test_param_groups_decay_only_matrices() -> None:
    model = build_arch("gpt", dict(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique


def test_warmup_cosine_shape() -> None:
    lrs = [warmup_cosine(s, 10, 100, 0.1) for s in range(120)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101], strict=True))
    assert lrs[100] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


def test_bigram_matches_hand_count() -> None:
    train = torch.tensor([0, 1, 0, 1, 0, 2])
    # counts after 0: ->1 twice, ->2 once; alpha=1, V=3: p(1|0) = 3/6, p(2|0) = 2/6
    ce, alpha = bigram_cross_entropy(train, torch.tensor([0, 0]), torch.tensor([1, 2]), 3,
                                     alphas=(1.0,))
    assert alpha == 1.0
    assert ce == pytest.approx(-(math.log(3 / 6) + math.log(2 / 6)) / 2)


def test_packed_dataset_shifts_labels() -> None:
    ds = PackedDataset(torch.arange(10), block_size=3)
    assert len(ds) == 3
    item = ds[1]
    assert item["input_ids"].tolist() == [3, 4, 5] and item["labels"].tolist() == [4, 5, 6]


def test_sampler_is_a_function_of_seed_and_epoch() -> None:
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_shards_ranks_disjointly() -> None:
    shards = [list(ResumableSampler(10, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_training_shards_pad_with_repeats_evaluation_shards_with_ignored_samples() -> None:
    train = [list(ResumableSampler(11, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 6 and set(train[0] + train[1]) == set(range(11))
    evals = [list(ResumableSampler(11, shuffle=False, rank=r, world_size=2)) for r in (0, 1)]
    assert len(evals[0]) == len(evals[1]) == 6
    real = [i for shard in evals for i in shard if i < 11]
    assert sorted(real) == list(range(11))  # every sample exactly once across ranks
    ds = RankPadded(PackedDataset(torch.arange(34), block_size=3, pad_id=0))  # 11 blocks
    assert len(ds) == 11
    [pad] = [i for shard in evals for i in shard if i >= 11]
    item = ds[pad]
    assert (item["labels"] == IGNORE_INDEX).all() and (item["attention_mask"] == 0).all()
    assert torch.equal(ds[3]["labels"], PackedDataset(torch.arange(34), 3, pad_id=0)[3]["labels"])


def test_loader_resumes_mid_epoch() -> None:
    ds = PackedDataset(torch.arange(200), block_size=3)

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(ds, batch_size=4, sampler=ResumableSampler(len(ds), seed=1),
                                   drop_last=True)

    full = [b["input_ids"] for b in loader()]
    first = loader()
    it = iter(first)
    seen = [next(it)["input_ids"] for _ in range(5)]
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 5}
    second = loader()
    second.load_state_dict(state)
    rest = [b["input_ids"] for b in second]
    assert len(seen) + len(rest) == len(full)
    for x, y in zip(seen + rest, full, strict=True):
        assert torch.equal(x, y)
