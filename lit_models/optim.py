"""AdamW with decay/no-decay parameter groups and a linear-warmup + cosine schedule (nanoGPT)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

# Each group's ``name`` (Lightning's LearningRateMonitor names its series after it: train/lr_decay).
GROUP_NAMES = ("decay", "no_decay")


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Matrices (dim >= 2) are decayed; biases, norms and other vectors are not."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": GROUP_NAMES[0]},
        {"params": no_decay, "weight_decay": 0.0, "name": GROUP_NAMES[1]},
    ]


def restore_group_names(optimizer: torch.optim.Optimizer) -> None:
    """Name the groups of an optimizer state loaded from a checkpoint written before groups had
    names (``load_state_dict`` keeps the saved groups' keys, so the names would be lost)."""
    if len(optimizer.param_groups) == len(GROUP_NAMES):
        for group, name in zip(optimizer.param_groups, GROUP_NAMES, strict=True):
            group.setdefault("name", name)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over the named ``decay`` / ``no_decay`` groups of ``module``."""
    optimizer = torch.optim.AdamW(
        param_groups(module.named_parameters(), weight_decay), lr=lr, betas=tuple(betas), eps=eps
    )
    optimizer.register_load_state_dict_post_hook(restore_group_names)
    return optimizer
