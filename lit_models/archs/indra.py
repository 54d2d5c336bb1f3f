"""IndraQuantum: token embeddings -> quantum projector ``Z = M * exp(iP)`` -> GPT backbone ->
head recombining Re/Im into logits (seeds/indraquantum_phase2.md), one readable file.

Shapes: the embedding has ``d_model`` dims; the projector maps it to ``n_complex = n_embd // 2``
complex numbers per token, with phase ``P = W_p h + b_p`` and magnitude ``M = softplus(W_m h +
b_m)`` (softplus: smooth and strictly positive, so ``M > 0`` and ``Z = M e^{iP}`` has a
well-defined phase). ``h`` is the LayerNorm of token (+ learned position) embedding, which puts
``P`` at about 1 rad of spread and ``M`` around 0.7 at init: without it, GPT-sized embeddings
(std 0.02) would give every token nearly the same ``Z``.

Real representation: the backbone (the platform's pre-LN ``Block`` s, width ``n_embd``) runs on
``[Re Z, Im Z] = [M cos P, M sin P]`` concatenated, i.e. C^n as R^2n. The head reads the final
state ``u = ln_f(x)`` back as ``u_re + i u_im`` and scores token ``v`` by the complex inner
product with its own projected state, ``Re <u, Z_v> / sqrt(2n) = (u_re . Re Z_v + u_im . Im
Z_v) / sqrt(2n)`` (``tie_embeddings=True``, no extra parameters); with ``tie_embeddings=False``
a separate complex output matrix ``W = W_re + i W_im`` gives ``Re(conj(W) u)``, which is a real
linear map of ``[u_re; u_im]``.

Baseline switch: ``projector="real"`` replaces the projector by one ``Linear(d_model, n_embd)``
on the same normalised embedding: exactly the projector's parameter count (two
``Linear(d_model, n_complex)`` with bias), same backbone and head, no phase/magnitude.

After each forward the complex projector leaves ``quantum_state = (magnitude, phase)``, each
``(B, T, n_complex)`` and still in the graph, for the distillation recipe's phase/magnitude
alignment terms (``None`` for the real projector). ``forward`` itself returns no regularizer
terms, so the plain ``LanguageModel`` recipe trains it with CE alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.archs.gpt import GPT, GPTConfig
from lit_models.archs.registry import register
from lit_models.components import (
    MLP,
    Block,
    CausalSelfAttention,
    PHMLinear,
    RotaryEmbedding,
    make_linear,
)

PROJECTORS = ("complex", "real")


@dataclass
class IndraConfig(GPTConfig):
    """GPT's options for the backbone (``n_embd`` = its width = 2 x complex dims) plus the
    embedding width ``d_model`` and the projector kind."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128          # backbone width: 2 * n_complex real numbers per token
    d_model: int = 128         # token-embedding width (the write-up's 128)
    projector: str = "complex"  # "complex" (Z = M e^{iP}) | "real" (baseline, equal parameters)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.d_model, int) or self.d_model <= 0:
            raise ValueError(f"IndraConfig.d_model must be a positive int, got {self.d_model!r}")
        if self.n_embd % 2:
            raise ValueError(f"IndraConfig.n_embd={self.n_embd} must be even: the backbone "
                             "runs on [Re Z, Im Z] of n_embd // 2 complex numbers")
        if self.projector not in PROJECTORS:
            raise ValueError(f"IndraConfig.projector must be one of {PROJECTORS}, "
                             f"got {self.projector!r}")

    @property
    def n_complex(self) -> int:
        return self.n_embd // 2


class QuantumProjector(nn.Module):
    """``h -> (Z as [Re, Im], magnitude M, phase P)`` with ``M = softplus(W_m h + b_m) + eps``.

    ``eps`` (1e-6) keeps ``M > 0`` where float32 softplus underflows to 0 (pre-activations below
    about -104), so the phase stays defined and ``log M`` finite.
    """

    eps = 1e-6

    def __init__(self, d_in: int, n_complex: int) -> None:
        super().__init__()
        self.phase = nn.Linear(d_in, n_complex)
        self.magnitude = nn.Linear(d_in, n_complex)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        phase = self.phase(h)
        magnitude = F.softplus(self.magnitude(h)) + self.eps
        z = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=-1)
        return z, magnitude, phase


class RealProjector(nn.Module):
    """The baseline: one real ``Linear(d_in, 2 * n_complex)``, the complex projector's size."""

    def __init__(self, d_in: int, n_complex: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, 2 * n_complex)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return self.proj(h), None, None


@register("indra", IndraConfig)
class Indra(GPT):
    """Shares GPT's weight init, KV cache and parameter counting; builds its own embedding,
    projector and head around the same ``Block`` s."""

    def __init__(self, config: IndraConfig) -> None:
        nn.Module.__init__(self)  # GPT.__init__ would build a GPT-shaped embedding and head
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = nn.Embedding(c.block_size, c.d_model) if c.pos_embedding == "learned" else None
        self.ln_in = nn.LayerNorm(c.d_model, bias=c.bias)
        projector_cls = QuantumProjector if c.projector == "complex" else RealProjector
        self.projector = projector_cls(c.d_model, c.n_complex)
        rope = (RotaryEmbedding(c.head_dim, c.block_size, c.rope_base)
                if c.pos_embedding == "rope" else None)
        self.drop = nn.Dropout(c.dropout)
        linear = partial(make_linear, kind=c.linear, phm_n=c.phm_n)
        self.blocks = nn.ModuleList(
            Block(c.n_embd,
                  CausalSelfAttention(c.n_embd, c.n_head, c.dropout, c.bias, c.qk_norm, rope, linear),
                  MLP(c.n_embd, c.mlp_hidden, c.dropout, c.bias, linear), bias=c.bias)
            for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.quantum_state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's residual scaling, as in GPT
            if name.endswith("proj.weight") and name.startswith("blocks."):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        for name, m in self.blocks.named_modules():
            if isinstance(m, PHMLinear):
                m.reset_parameters(0.02 / math.sqrt(2 * c.n_layer) if name.endswith("proj") else 0.02)
        # Unit-scale projector outputs: phases spread over ~1 rad, magnitudes around softplus(0).
        for lin in self.projector.children():
            nn.init.normal_(lin.weight, mean=0.0, std=1.0 / math.sqrt(c.d_model))

    def project(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None,
                                                  torch.Tensor | None]:
        """Embeddings -> projector outputs on their LayerNorm: ``[Re Z, Im Z]``, M, P."""
        return self.projector(self.ln_in(emb))

    def forward(self, idx: torch.Tensor, start_pos: int | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, T, vocab) and no regularizer terms; sets ``quantum_state``."""
        t = idx.size(1)
        pos0 = start_pos or 0
        if pos0 + t > self.config.block_size:
            raise ValueError(f"sequence of {pos0 + t} tokens exceeds block_size={self.config.block_size}")
        h = self.wte(idx)
        if self.wpe is not None:
            h = h + self.wpe(torch.arange(pos0, pos0 + t, device=idx.device))
        x, magnitude, phase = self.project(h)
        self.quantum_state = None if magnitude is None else (magnitude, phase)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, start_pos=start_pos)
        u = self.ln_f(x)
        if self.lm_head is not None:
            return self.lm_head(u), {}
        vocab_states, _, _ = self.project(self.wte.weight)  # each token's own Z, as [Re, Im]
        return (u @ vocab_states.t()) / math.sqrt(self.config.n_embd), {}


def phase_dispersion(phase: torch.Tensor) -> torch.Tensor:
    """Circular variance of each token's phases, ``1 - |mean_j exp(i P_j)|`` in [0, 1]:
    0 when all components point the same way, near 1 when they are spread uniformly."""
    resultant = torch.sqrt(torch.cos(phase).mean(-1) ** 2 + torch.sin(phase).mean(-1) ** 2 + 1e-12)
    return 1.0 - resultant


def magnitude_salience(magnitude: torch.Tensor) -> torch.Tensor:
    """Per-token salience ``tanh(mean_j M_j)`` in (0, 1): the magnitude on a probability scale."""
    return torch.tanh(magnitude.mean(-1))
