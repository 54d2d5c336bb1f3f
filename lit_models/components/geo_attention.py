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

Two kernels, chosen by device (``geo_attention``):

- CUDA, full causal passes: FlexAttention (``flex_geo_attention``). With ``scale=1`` its score is
  ``a . b = BC``; a ``score_mod`` turns it into ``-gamma_h (2 acos(clamp(BC)))^2`` on a causal
  block mask; compiled forward and backward, no (T, T) matrix in memory.
- CPU (and single decoding steps with the KV cache): ``GeoAttentionFunction``, block-causal. The
  queries go ``BLOCK`` rows at a time against only the keys they may see (the blocks on and
  below the diagonal), with a hand-written backward that keeps the angle ``t = acos(BC)`` and the
  probabilities of those blocks only, gets the softmax row term from ``rowsum(dy * y)`` as in
  FlashAttention, and ``acos``'s slope from ``1 / sin(t)``. FlexAttention on CPU refuses inputs
  that require grad (torch 2.13), so it serves no CPU training.

Attention-probability dropout is not applied (residual dropout is).
"""

from __future__ import annotations

import functools
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


BLOCK = 64  # query rows per block of the CPU path (32, 64 and 128 tried at seq 512: 64 fastest)
KERNELS = ("auto", "blocked", "full", "flex")


class GeoAttentionFunction(torch.autograd.Function):
    """Causal ``softmax(-gamma * (2 acos(clamp(a b^T)))^2) @ v``, block by block, fused backward.

    a: (B, H, T, D) square-rooted query distributions; b: (B, H, S, D) key ones; v: (B, H, S, Dv);
    gamma: (H,); offset: absolute position of the first query (``S = offset + T``; None = 0):
    query i sees keys ``0..offset + i``. The queries are taken ``block`` rows at a time and each
    block is scored only against the keys it may see, so only the blocks on and below the
    diagonal are computed and no (T, S) matrix of the whole batch is ever built; each block is
    small enough to stay in cache through its chain of element-wise passes. ``block >= T`` is
    the one-block path (the full (T, S) matrices at once).
    """

    @staticmethod
    def forward(ctx, a, b, v, gamma, offset, eps, block=BLOCK):
        offset = int(offset or 0)
        if b.size(2) != offset + a.size(2):
            raise ValueError(f"keys: {b.size(2)} positions, expected offset {offset} + queries {a.size(2)}")
        device_type = a.device.type if a.device.type in ("cuda", "cpu") else "cpu"  # e.g. meta
        with torch.autocast(device_type=device_type, enabled=False):
            a, b, vf, g = a.float(), b.float(), v.float(), gamma.float().view(1, -1, 1, 1)
            ys, saved = [], []
            for i0, i1, end in _row_blocks(a.size(2), offset, block):
                t = torch.matmul(a[:, :, i0:i1], b[:, :, :end].transpose(-1, -2))
                t = t.clamp_(0.0, 1.0 - eps).acos_()  # the angle acos(BC)
                scores = t.square().mul_(-4.0 * g)
                if end - (offset + i0) > 1:  # the block's diagonal part: key j > offset + query i
                    above = torch.ones(i1 - i0, end - offset - i0, dtype=torch.bool,
                                       device=a.device).triu_(1)
                    scores[..., offset + i0:].masked_fill_(above, float("-inf"))
                probs = torch.softmax(scores, dim=-1)
                del scores
                ys.append(torch.matmul(probs, vf[:, :, :end]))
                saved += [t, probs]
            y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)
        ctx.save_for_backward(a, b, vf, g, y, *saved)
        ctx.eps, ctx.offset, ctx.block, ctx.v_dtype = eps, offset, block, v.dtype
        return y.to(v.dtype)

    @staticmethod
    def backward(ctx, dy):
        a, b, v, g, y, *saved = ctx.saved_tensors
        dy = dy.float()
        da, db, dv = torch.empty_like(a), torch.zeros_like(b), torch.zeros_like(v)
        dgamma = torch.zeros(g.numel(), dtype=torch.float32, device=g.device)
        row = (dy * y).sum(-1, keepdim=True)  # softmax row term rowsum(dP * P) = rowsum(dy * y)
        # acos(1 - eps) in float32: the angle of every clamped pair (a tensor: traceable)
        floor = torch.full((), 1.0 - ctx.eps, dtype=a.dtype, device=a.device).acos()
        for n, (i0, i1, end) in enumerate(_row_blocks(a.size(2), ctx.offset, ctx.block)):
            t, probs, dyi = saved[2 * n], saved[2 * n + 1], dy[:, :, i0:i1]
            dv[:, :, :end].add_(torch.matmul(probs.transpose(-1, -2), dyi))
            ds = torch.matmul(dyi, v[:, :, :end].transpose(-1, -2))  # dP
            ds = ds.sub_(row[:, :, i0:i1]).mul_(probs).mul_(t)  # softmax backward, times t
            dgamma.sub_(4.0 * torch.einsum("bhij,bhij->h", ds, t))  # d/dgamma of -4 gamma t^2
            # d score / d BC = 8 gamma t / sin(t) (sin(acos BC) = sqrt(1 - BC^2)); 0 where clamped
            inv_sin = torch.sin(t).reciprocal_().masked_fill_(t <= floor, 0.0)
            dbc = ds.mul_(inv_sin).mul_(8.0 * g)
            del inv_sin
            da[:, :, i0:i1] = torch.matmul(dbc, b[:, :, :end])
            db[:, :, :end].add_(torch.matmul(dbc.transpose(-1, -2), a[:, :, i0:i1]))
        return da, db, dv.to(ctx.v_dtype), dgamma, None, None, None


def _row_blocks(n_queries: int, offset: int, block: int):
    """(first query, end query, end key) of each block of ``block`` query rows."""
    step = max(int(block), 1)
    return [(i0, min(i0 + step, n_queries), offset + min(i0 + step, n_queries))
            for i0 in range(0, n_queries, step)]


# --------------------------------------------------------------------------- FlexAttention (CUDA)
def flex_available() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention``."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_COMPILED_FLEX: list[Callable] = []


def _flex_fn(device: torch.device) -> Callable:
    """``flex_attention``, compiled once on CUDA (the fused kernel); eager elsewhere (CPU: the
    unfused reference implementation, no-grad only in torch 2.13)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED_FLEX[0]


@functools.lru_cache(maxsize=16)
def _causal_block_mask(n: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q, k: q >= k, None, None, n, n, device=device)


def flex_geo_attention(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:
    """The causal (T == S) Fisher-Rao attention through FlexAttention: with ``scale=1`` its score
    is ``a . b = BC``, which ``score_mod`` turns into ``-gamma_h (2 acos(clamp(BC)))^2``; the
    causal block mask skips the blocks above the diagonal. Forward and backward on CUDA
    (gradients reach ``gamma`` through the captured tensor); in float32 like the other paths."""
    device_type = a.device.type if a.device.type in ("cuda", "cpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        g = gamma.float()

        def score_mod(score, batch, head, q_idx, kv_idx):
            t = torch.acos(score.clamp(0.0, 1.0 - eps))
            return -4.0 * g[head] * t * t

        mask = _causal_block_mask(a.size(2), a.device)
        y = _flex_fn(a.device)(a.float(), b.float(), v.float(), score_mod=score_mod,
                               block_mask=mask, scale=1.0)
    return y.to(v.dtype)


def select_kernel(a: torch.Tensor, b: torch.Tensor, offset: int) -> str:
    """The kernel ``auto`` picks: ``flex`` for a full causal pass on CUDA, ``blocked`` otherwise."""
    full_pass = offset == 0 and b.size(2) == a.size(2)
    return "flex" if a.is_cuda and full_pass and flex_available() else "blocked"


def geo_attention(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
                  offset: int = 0, eps: float = 1e-6, kernel: str = "auto") -> torch.Tensor:
    """Causal Fisher-Rao attention of square-rooted distributions ``a`` (queries) and ``b``
    (keys, ``offset`` + T of them) with values ``v``; (B, H, T, Dv).

    ``kernel``: ``auto`` (FlexAttention on CUDA for a full causal pass, where T == S; the
    block-causal fused path otherwise: CPU, and single decoding steps with the KV cache),
    ``blocked``, ``full`` (one block: the (T, S) matrices at once) or ``flex``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        kernel = select_kernel(a, b, offset)
    if kernel == "flex":
        if offset or b.size(2) != a.size(2):
            raise ValueError("the FlexAttention path is for full causal passes (offset 0, T == S)")
        return flex_geo_attention(a, b, v, gamma, eps)
    block = a.size(2) if kernel == "full" else BLOCK
    return GeoAttentionFunction.apply(a, b, v, gamma, offset, eps, block)


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
        self.kernel = "auto"  # see geo_attention(); benchmarks and tests pin one

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
        if start_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("start_pos given but no KV cache: call model.setup_kv_cache() first")
            sk, v = self.kv_cache.update(start_pos, sk.to(self.kv_cache.k.dtype), v)
        y = geo_attention(sq, sk, v, self.gamma, pos0, self.eps, self.kernel)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.proj(y))


def geo_attention_reference(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor,
                            gamma: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain-autograd version of ``geo_attention`` (causal, T == S, full matrices): the
    reference the kernels are tested against."""
    t = torch.acos((a @ b.transpose(-1, -2)).clamp(0.0, 1.0 - eps))
    scores = -gamma.view(1, -1, 1, 1) * (2.0 * t) ** 2
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=a.device).tril()
    return F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
