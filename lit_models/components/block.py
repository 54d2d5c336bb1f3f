"""Pre-LayerNorm transformer block that takes its attention and MLP as modules.

Taking the sub-modules (instead of building them) lets architectures swap in their own
attention (e.g. QTG's Fisher-Rao attention) while sharing the residual wiring.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, n_embd: int, attn: nn.Module, mlp: nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = attn
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), start_pos=start_pos)
        return x + self.mlp(self.ln_2(x))
