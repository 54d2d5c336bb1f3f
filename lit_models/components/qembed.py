"""Quantum (amplitude) embedding of the QTG architecture.

A token's embedding ``f(x)`` (the architecture's embedding table, so ``f`` is learned) is read
as ``n_embd / 2`` complex amplitudes in the real representation ``[Re | Im]`` and normalised to
a unit state, ``alpha = f(x) / ||f(x)||`` (so ``sum_k |alpha_k|^2 = 1``: the Born probabilities
``Re_k^2 + Im_k^2`` sum to one). The complex 2-norm equals the real 2-norm of ``[Re | Im]``, so
no complex dtype is needed and Euclidean distances between states are the complex ones.

L_quantum (``quantum`` loss term): ``mean (||f(x)||^2 - 1)^2``. The normalisation makes the
forward pass blind to ``||f||``, so weight decay would shrink it freely, and the normalisation's
Jacobian grows like ``1 / ||f||``; the term keeps ``f`` near the unit sphere.
"""

from __future__ import annotations

import torch
from torch import nn


class QEmbed(nn.Module):
    """``forward(f) -> (alpha, L_quantum)``: unit-norm amplitudes of the embeddings ``f``."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sq_norm = f.float().square().sum(-1, keepdim=True)
        alpha = f * torch.rsqrt(sq_norm.clamp_min(self.eps**2)).to(f.dtype)
        return alpha, (sq_norm - 1.0).square().mean()

    @staticmethod
    def probabilities(alpha: torch.Tensor) -> torch.Tensor:
        """Born-rule probabilities ``|alpha_k|^2`` of the ``n_embd / 2`` basis states."""
        re, im = alpha.float().chunk(2, dim=-1)
        return re.square() + im.square()
