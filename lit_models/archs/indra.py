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

Loss terms (the architecture's aux losses): given a distillation teacher (``forward(...,
teacher=TeacherSignal(logits, mask))``, passed by ``lit_models.distillation``), the complex
projector returns the phase/magnitude alignment terms ``{"phase", "mag"}`` of
``phase_mag_losses``; without one (the plain ``LanguageModel`` recipe, evaluation, generation)
and with the real projector it returns none, so it trains with CE alone. ``diagnostics`` gives
the magnitude salience and phase dispersion to monitor in every run.

Built on the GPT (``lit_models.archs.gpt``): same blocks, weight init, KV cache, activation
checkpointing and activation-memory model; it overrides the input (embedding + projector) and
the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.archs.gpt import GPT, GPTConfig
from lit_models.archs.registry import TeacherSignal, register
from lit_models.components.block import Block

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

    def _projector_bytes(self, rows: int, elem: int) -> float:
        """What the input path saves per row (a token, or a vocabulary entry for the tied head):
        the LayerNorm input 4d and output ed (d = d_model); the complex projector's magnitude
        pre-activation, softplus, phase, cos and sin, ec each (c = n_complex), the real one
        nothing more."""
        per_row = (4 + elem) * self.d_model
        if self.projector == "complex":
            per_row += 5 * elem * self.n_complex
        return rows * per_row

    def embedding_activation_bytes(self, b: int, s: int, elem: int) -> float:
        """Indra's input: the projector path above for every token (its output, the backbone's
        input, is the first block's saved input) and the dropout mask 1x when dropout > 0."""
        drop = 1 if self.dropout > 0 else 0
        return self._projector_bytes(b * s, elem) + drop * (b * s * self.n_embd)

    def head_activation_bytes(self, b: int, s: int, elem: int) -> float:
        """The GPT's head; the tied head also projects the whole vocabulary each step (the
        projector path for V rows, independent of the batch) and keeps the V x n_embd states
        for the score matmul's backward (e V n_embd)."""
        head = super().head_activation_bytes(b, s, elem)
        if self.tie_embeddings:
            head += (self._projector_bytes(self.vocab_size, elem)
                     + elem * self.vocab_size * self.n_embd)
        return head

    def flops_terms(self, seq_len: int | None = None, batch_tokens: int = 1
                    ) -> dict[str, tuple[float, float]]:
        """The GPT's terms (``GPTConfig.flops_terms``) plus Indra's input path, per token: the
        projector's matmuls 2 d C (complex: two ``d -> C/2`` maps; real: one ``d -> C``, the
        same count) and, complex only, softplus, cos, sin and two products per complex number
        (7 C / 2). The tied head scores against every token's projected state, so it projects
        the whole vocabulary once a step: that path for V rows over ``batch_tokens`` tokens."""
        terms = super().flops_terms(seq_len, batch_tokens)
        path = 2 * self.d_model * self.n_embd + (3.5 * self.n_embd if self.projector == "complex"
                                                   else 0.0)
        extra = {"projector": path}
        if self.tie_embeddings:
            extra["vocab_projection"] = self.vocab_size * path / batch_tokens
        terms.update({part: (value, 2 * value) for part, value in extra.items()})
        return terms


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


@register("indra", IndraConfig, shard_unit=Block)
class Indra(GPT):
    """The GPT with its own input (embedding of width ``d_model`` -> LayerNorm -> projector) and
    head (complex inner product with each token's projected state, or an untied matrix)."""

    def __init__(self, config: IndraConfig) -> None:
        super().__init__(config)
        # Unit-scale projector outputs: phases spread over ~1 rad, magnitudes around softplus(0).
        for lin in self.projector.children():
            nn.init.normal_(lin.weight, mean=0.0, std=1.0 / math.sqrt(config.d_model))

    def make_input(self) -> None:
        c = self.config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = nn.Embedding(c.block_size, c.d_model) if c.pos_embedding == "learned" else None
        self.ln_in = nn.LayerNorm(c.d_model, bias=c.bias)
        projector_cls = QuantumProjector if c.projector == "complex" else RealProjector
        self.projector = projector_cls(c.d_model, c.n_complex)

    def make_head(self) -> None:
        c = self.config
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False)

    def project(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None,
                                                  torch.Tensor | None]:
        """Embeddings -> projector outputs on their LayerNorm: ``[Re Z, Im Z]``, M, P."""
        return self.projector(self.ln_in(emb))

    def project_tokens(self, idx: torch.Tensor, start_pos: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Tokens -> ``[Re Z, Im Z]``, magnitude M and phase P, each (B, T, n_complex) (M and P
        None for the real projector)."""
        pos0 = start_pos or 0
        h = self.wte(idx)
        if self.wpe is not None:
            h = h + self.wpe(torch.arange(pos0, pos0 + idx.size(1), device=idx.device))
        return self.project(h)

    def embed(self, idx: torch.Tensor, start_pos: int | None = None,
              teacher: TeacherSignal | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``[Re Z, Im Z]`` and, given a teacher, the ``phase`` and ``mag`` alignment terms."""
        x, magnitude, phase = self.project_tokens(idx, start_pos)
        aux = {}
        if teacher is not None and magnitude is not None:
            l_phase, l_mag = phase_mag_losses(magnitude, phase, teacher.logits, teacher.mask)
            aux = {"phase": l_phase, "mag": l_mag}
        return self.drop(x), aux

    def head(self, u: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(u)
        vocab_states, _, _ = self.project(self.wte.weight)  # each token's own Z, as [Re, Im]
        return (u @ vocab_states.t()) / math.sqrt(self.config.n_embd)

    @torch.no_grad()
    def diagnostics(self, idx: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean magnitude salience and phase dispersion over ``mask`` (none: real projector)."""
        _, magnitude, phase = self.project_tokens(idx)
        if magnitude is None:
            return {}
        return {"mag_salience": masked_mean(magnitude_salience(magnitude.float()), mask),
                "phase_dispersion": masked_mean(phase_dispersion(phase.float()), mask)}


def phase_dispersion(phase: torch.Tensor) -> torch.Tensor:
    """Circular variance of each token's phases, ``1 - |mean_j exp(i P_j)|`` in [0, 1]:
    0 when all components point the same way, near 1 when they are spread uniformly."""
    resultant = torch.sqrt(torch.cos(phase).mean(-1) ** 2 + torch.sin(phase).mean(-1) ** 2 + 1e-12)
    return 1.0 - resultant


def magnitude_salience(magnitude: torch.Tensor) -> torch.Tensor:
    """Per-token salience ``tanh(mean_j M_j)`` in (0, 1): the magnitude on a probability scale."""
    return torch.tanh(magnitude.mean(-1))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is true (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def teacher_targets(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token confidence ``max_v p(v)`` and normalised entropy ``H(p) / log V``, both in
    [0, 1], of the teacher's distribution ``p = softmax(t)`` (temperature 1: its own belief)."""
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1) / math.log(teacher_logits.size(-1))
    return p.max(-1).values, entropy


def phase_mag_losses(magnitude: torch.Tensor, phase: torch.Tensor, teacher_logits: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align the quantum state with the teacher's certainty, per labelled token (``mask``):

    - ``L_mag = mean (tanh(mean_j M_j) - max_v p_teacher(v))^2``: a salient (large-magnitude)
      state where the teacher is confident.
    - ``L_phase = mean (D(P) - H(p_teacher) / log V)^2`` with ``D(P) = 1 - |mean_j e^{i P_j}|``
      the circular variance of the token's phases: dispersed phases where the teacher is
      uncertain, aligned phases where it is sure.

    Both compare quantities in [0, 1], so each term is at most 1. Returns ``(L_phase, L_mag)``.
    """
    confidence, entropy = teacher_targets(teacher_logits)
    salience, dispersion = magnitude_salience(magnitude.float()), phase_dispersion(phase.float())
    return masked_mean((dispersion - entropy) ** 2, mask), masked_mean((salience - confidence) ** 2, mask)
