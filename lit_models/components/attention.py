"""Causal multi-head self-attention on ``F.scaled_dot_product_attention`` with a KV cache.

Options: rotary positions (pass a ``RotaryEmbedding``) and QK-norm (LayerNorm on queries and
keys per head, Dehghani et al. 2023 / OLMo-2), a config switch of the architectures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.components.rope import RotaryEmbedding


class KVCache(nn.Module):
    """Preallocated key/value buffers of shape (B, H, max_len, D) for incremental decoding."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` at ``start_pos`` and return all keys/values up to the new end."""
        end = start_pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: position {end} > cache length {self.max_len}")
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 qk_norm: bool = False, rope: RotaryEmbedding | None = None,
                 linear: Callable[..., nn.Module] = nn.Linear) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.qkv = linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = linear(n_embd, n_embd, bias=bias)
        self.q_norm = nn.LayerNorm(self.head_dim, bias=bias) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim, bias=bias) if qk_norm else None
        self.rope = rope
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        """``start_pos=None``: full causal pass. An int: decode with the KV cache from there."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        pos0 = start_pos or 0
        if self.rope is not None:
            q, k = self.rope(q, pos0), self.rope(k, pos0)
        mask, is_causal = None, True
        if start_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("start_pos given but no KV cache: call model.setup_kv_cache() first")
            k, v = self.kv_cache.update(start_pos, k, v)
            if start_pos > 0:
                # Query i (absolute position start_pos+i) sees keys 0..start_pos+i.
                mask = torch.ones(t, k.size(2), dtype=torch.bool, device=x.device).tril(start_pos)
                is_causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.proj(y))
