"""Fisher-Rao ("geometric") causal self-attention of the QTG architecture.

Each head maps its query and key vectors to categorical distributions over the head's
``head_dim`` coordinates, ``p = softmax(q)``, and scores a query-key pair by the squared
Fisher-Rao distance between them::

    d_FR(p, r) = 2 * acos(BC(p, r)),   BC(p, r) = sum_k sqrt(p_k r_k)   (Bhattacharyya coefficient)
    score_ij   = -gamma_h * d_FR(p_i, r_j)^2                              (gamma_h > 0, learned)

``BC`` for all pairs is one matmul of square roots, ``sqrt(p) @ sqrt(r)^T``. Numerical safety:
``sqrt(p) = exp((q - logsumexp(q)) / 2)`` is computed in the log domain (no sqrt of 0, so no
infinite slope), and ``BC`` is clamped to ``[0, 1 - eps]`` before ``acos`` (whose slope is
infinite at 1); the clamped pairs (near-identical distributions) get no gradient through ``BC``.
The score chain runs in float32 even under autocast: ``acos`` near 1 amplifies bf16 rounding.

``GeoAttentionFunction`` fuses scores, causal mask, softmax and ``@ v`` with a hand-written
backward that keeps only the angle ``t = acos(BC)`` and the probabilities (two (T, S) tensors
per head) instead of autograd's five, and gets the softmax row term from ``rowsum(dy * y)`` as
in FlashAttention; ``acos``'s slope is rebuilt from a recomputed ``BC``. Attention-probability dropout is not applied (residual dropout is).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.components.attention import KVCache
from lit_models.components.rope import RotaryEmbedding


def sqrt_probs(logits: torch.Tensor) -> torch.Tensor:
    """``sqrt(softmax(logits))`` over the last dim, computed stably in the log domain."""
    return torch.exp(0.5 * torch.log_softmax(logits.float(), dim=-1))


def fisher_rao_distance(p: torch.Tensor, r: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise Fisher-Rao distances between categorical distributions ``p`` (..., T, K) and
    ``r`` (..., S, K) (rows sum to 1): ``2 acos(sqrt(p) @ sqrt(r)^T)``, shape (..., T, S)."""
    bc = p.clamp_min(0).sqrt() @ r.clamp_min(0).sqrt().transpose(-1, -2)
    return 2.0 * torch.acos(bc.clamp(0.0, 1.0 - eps))


class GeoAttentionFunction(torch.autograd.Function):
    """``softmax(-gamma * (2 acos(clamp(a b^T)))^2 + mask) @ v`` with a memory-lean backward.

    a: (B, H, T, D) square-rooted query distributions; b: (B, H, S, D) key ones; v: (B, H, S, Dv);
    gamma: (H,); mask: (T, S) bool (True = may attend) or None for plain causal with T == S.
    """

    @staticmethod
    def forward(ctx, a, b, v, gamma, mask, eps):
        device_type = a.device.type if a.device.type in ("cuda", "cpu") else "cpu"  # e.g. meta
        with torch.autocast(device_type=device_type, enabled=False):
            a, b, vf, g = a.float(), b.float(), v.float(), gamma.float().view(1, -1, 1, 1)
            t = torch.matmul(a, b.transpose(-1, -2)).clamp_(0.0, 1.0 - eps).acos_()  # acos(BC)
            scores = t.square().mul_(-4.0 * g)
            if mask is None:
                mask = torch.ones(t.shape[-2:], dtype=torch.bool, device=t.device).tril_()
            probs = torch.softmax(scores.masked_fill_(~mask, float("-inf")), dim=-1)
            del scores
            y = torch.matmul(probs, vf)
        ctx.save_for_backward(a, b, vf, g, t, probs, y)
        ctx.eps, ctx.v_dtype = eps, v.dtype
        return y.to(v.dtype)

    @staticmethod
    def backward(ctx, dy):
        a, b, v, g, t, probs, y = ctx.saved_tensors
        dy = dy.float()
        dv = torch.matmul(probs.transpose(-1, -2), dy)
        ds = torch.matmul(dy, v.transpose(-1, -2))  # dP
        ds.sub_((dy * y).sum(-1, keepdim=True)).mul_(probs)  # softmax backward: P * (dP - rowsum)
        dgamma = -4.0 * (ds * t.square()).sum(dim=(0, 2, 3))
        # d score / d BC = -8 gamma t * dt/dBC = 8 gamma t / sqrt(1 - BC^2); zero where clamped.
        # BC is recomputed (one matmul) rather than saved or recovered with sin(t): both cost more.
        bc = torch.matmul(a, b.transpose(-1, -2))
        clamped = (bc < 0.0) | (bc > 1.0 - ctx.eps)
        inv_sin = bc.clamp_(0.0, 1.0 - ctx.eps).square_().neg_().add_(1.0).rsqrt_()
        dbc = ds.mul_(8.0 * g).mul_(t).mul_(inv_sin).masked_fill_(clamped, 0.0)
        del bc, inv_sin
        da = torch.matmul(dbc, b)
        db = torch.matmul(dbc.transpose(-1, -2), a)
        return da, db, dv.to(ctx.v_dtype), dgamma, None, None


class GeoSelfAttention(nn.Module):
    """Drop-in for ``CausalSelfAttention`` (same projections, KV cache and rotary option).

    After each forward, ``self.geo_loss`` holds L_geo of that call: the mean normalised KL
    divergence from the uniform distribution, ``(log D - H(p)) / log D`` in [0, 1], of its query
    and key distributions. It keeps them off the simplex's faces, where Fisher-Rao distances
    saturate (disjoint supports are all at distance pi) and the scores stop separating keys.
    The cache holds the square-rooted key distributions, so decoding never re-normalises keys.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 rope: RotaryEmbedding | None = None, gamma_init: float = 1.0, eps: float = 1e-6,
                 linear: Callable[..., nn.Module] = nn.Linear) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        if gamma_init <= 0:
            raise ValueError(f"gamma_init must be > 0, got {gamma_init}")
        self.n_head, self.head_dim, self.eps = n_head, n_embd // n_head, eps
        self.qkv = linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = linear(n_embd, n_embd, bias=bias)
        self.log_gamma = nn.Parameter(torch.full((n_head,), math.log(gamma_init)))
        self.rope = rope
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_cache: KVCache | None = None
        self.geo_loss: torch.Tensor | None = None

    @property
    def gamma(self) -> torch.Tensor:
        return self.log_gamma.exp()

    def _distributions(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Square roots of ``softmax(logits)`` and the normalised KL to uniform (per row)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        kl = (logp.exp() * logp).sum(-1) / math.log(self.head_dim) + 1.0
        return torch.exp(0.5 * logp), kl

    def forward(self, x: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        """``start_pos=None``: full causal pass. An int: decode with the KV cache from there."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        pos0 = start_pos or 0
        if self.rope is not None:
            q, k = self.rope(q, pos0), self.rope(k, pos0)
        sq, kl_q = self._distributions(q)
        sk, kl_k = self._distributions(k)
        self.geo_loss = 0.5 * (kl_q.mean() + kl_k.mean())
        mask = None
        if start_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("start_pos given but no KV cache: call model.setup_kv_cache() first")
            sk, v = self.kv_cache.update(start_pos, sk.to(self.kv_cache.k.dtype), v)
            mask = torch.ones(t, sk.size(2), dtype=torch.bool, device=x.device).tril_(start_pos)
        y = GeoAttentionFunction.apply(sq, sk, v, self.gamma, mask, self.eps)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.proj(y))


def geo_attention_reference(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor,
                            gamma: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain-autograd version of ``GeoAttentionFunction`` (causal, T == S), for tests."""
    t = torch.acos((a @ b.transpose(-1, -2)).clamp(0.0, 1.0 - eps))
    scores = -gamma.view(1, -1, 1, 1) * (2.0 * t) ** 2
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=a.device).tril()
    return F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
