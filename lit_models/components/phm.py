"""Parameterized hypercomplex multiplication (PHM) layers (Zhang et al., ICLR 2021).

``PHMLinear`` builds its weight as a sum of ``n`` Kronecker products,
``W = sum_i A_i (x) S_i`` with ``A_i`` of shape ``(n, n)`` (the learned "multiplication rule";
for n = 4 it can express the Hamilton product, i.e. a quaternion linear layer) and ``S_i`` of
shape ``(out/n, in/n)``: ``n**3 + in*out/n`` parameters instead of ``in*out``.

``make_linear`` is the one place architectures get their linear layers from, so the config switch
``linear: dense | phm`` (with ``phm_n``) reaches every projection that uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_KINDS = ("dense", "phm")


class PHMLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, n: int = 4, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"PHMLinear: n must be a positive int, got {n!r}")
        if in_features % n or out_features % n:
            raise ValueError(f"PHMLinear: in_features={in_features} and out_features={out_features} "
                             f"must both be divisible by n={n}")
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.rule = nn.Parameter(torch.empty(n, n, n))                              # A_i
        self.kernels = nn.Parameter(torch.empty(n, out_features // n, in_features // n))  # S_i
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Entries of ``W`` get standard deviation ``std`` (default: nn.Linear's 1/sqrt(3 in)).

        With ``A ~ N(0, 1/n)`` and ``S ~ N(0, std^2)``, ``Var W = n * (1/n) * std^2 = std^2``.
        """
        std = std if std is not None else 1.0 / math.sqrt(3 * self.in_features)
        nn.init.normal_(self.rule, std=1.0 / math.sqrt(self.n))
        nn.init.normal_(self.kernels, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight ``sum_i kron(A_i, S_i)`` (built on the fly)."""
        n, (_, p, q) = self.n, self.kernels.shape
        # W[a*p + r, b*q + s] = sum_i A[i, a, b] * S[i, r, s]
        w = torch.einsum("iab,irs->arbs", self.rule, self.kernels)
        return w.reshape(n * p, n * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, n: int = 4) -> PHMLinear:
        """The PHM layer closest to ``linear`` in Frobenius norm (Van Loan-Pitsianis).

        Rearranging ``W`` so that each ``(out/n, in/n)`` block becomes a row turns a sum of
        ``n`` Kronecker products into a rank-``n`` matrix; the truncated SVD gives the optimum.
        """
        out_f, in_f = linear.weight.shape
        layer = cls(in_f, out_f, n, bias=linear.bias is not None)
        p, q = out_f // n, in_f // n
        w = linear.weight.detach().to(torch.float64)
        blocks = w.reshape(n, p, n, q).permute(0, 2, 1, 3).reshape(n * n, p * q)
        u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
        root = s[:n].sqrt()
        with torch.no_grad():
            layer.rule.copy_((u[:, :n] * root).t().reshape(n, n, n))
            layer.kernels.copy_((vh[:n] * root.unsqueeze(1)).reshape(n, p, q))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.to(linear.weight.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, "
                f"bias={self.bias is not None}")


def make_linear(in_features: int, out_features: int, bias: bool = True, kind: str = "dense",
                phm_n: int = 4) -> nn.Module:
    """``nn.Linear`` (``kind="dense"``) or ``PHMLinear`` (``kind="phm"``, ``n = phm_n``)."""
    if kind == "dense":
        return nn.Linear(in_features, out_features, bias=bias)
    if kind == "phm":
        return PHMLinear(in_features, out_features, phm_n, bias=bias)
    raise ValueError(f"linear kind must be one of {LINEAR_KINDS}, got {kind!r}")
