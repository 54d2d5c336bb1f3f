"""Position-wise feed-forward network (GELU), as in GPT-2 / nanoGPT."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int, dropout: float = 0.0, bias: bool = True,
                 linear: Callable[..., nn.Module] = nn.Linear) -> None:
        super().__init__()
        self.fc = linear(n_embd, hidden, bias=bias)
        self.proj = linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(nn.functional.gelu(self.fc(x), approximate="tanh")))
