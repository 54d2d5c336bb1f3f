"""QTG: quantum embedding -> topological filter -> Fisher-Rao attention blocks (seeds/qtg_model.md).

A pre-LN GPT (``GPT``'s blocks, MLP, positions, tied head, KV cache) with three switchable parts:

* ``use_qembed``: ``QEmbed``, token -> unit-norm complex amplitudes (``n_embd / 2`` of them,
  carried as the real vector ``[Re | Im]``); off: the plain embedding.
* ``topo_filter``: ``"mst"`` (H0 persistence filter), ``"knn_mean"`` (k-NN mean control of equal
  cost) or ``"none"``; applied once to the embeddings, before positions are added.
* ``attention``: ``"geo"`` (Fisher-Rao distance scores) or ``"dot"`` (the GPT's SDPA attention).

Loss (the LanguageModel adds it): ``CE + lambda_topo L_topo + lambda_geo L_geo + lambda_quantum
L_quantum`` with the lambdas in ``model.loss_weights`` (defaults ``QTG_LOSS_WEIGHTS``). The terms,
returned by ``forward`` as aux losses (0 when their component is switched off, so every
ablation logs the same terms with the same weights):

* ``quantum``: ``mean (||f(x)||^2 - 1)^2`` over tokens, f the embedding before normalisation
  (see ``QEmbed``);
* ``topo``: soft total persistence of the filter's short-lived H0 bars (see ``TopoFilter``);
* ``geo``: mean over layers of the normalised KL(p || uniform) of the query/key distributions
  (see ``GeoSelfAttention``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lit_models.archs.gpt import GPT, GPTConfig
from lit_models.archs.registry import TeacherSignal, register
from lit_models.components.block import Block
from lit_models.components.geo_attention import GeoSelfAttention
from lit_models.components.qembed import QEmbed
from lit_models.components.rope import RotaryEmbedding
from lit_models.components.topo_filter import FILTER_MODES, TopoFilter

QTG_LOSS_WEIGHTS = {"topo": 0.1, "geo": 0.05, "quantum": 0.01}
ATTENTION_KINDS = ("geo", "dot")


@dataclass
class QTGConfig(GPTConfig):
    use_qembed: bool = True
    topo_filter: str = "mst"  # "mst" | "knn_mean" | "none"
    topo_k: int = 4  # earlier neighbours per token in the k-NN graph
    topo_threshold: float = 1.0  # persistence below which components merge (chordal scale [0, 2])
    topo_temperature: float = 0.05  # softness of that threshold
    attention: str = "geo"  # "geo" | "dot"
    geo_gamma_init: float = 1.0  # initial per-head gamma of -gamma * d_FR^2
    geo_eps: float = 1e-6  # Bhattacharyya coefficient clamped to [0, 1 - geo_eps]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.topo_filter not in FILTER_MODES:
            raise ValueError(f"QTGConfig.topo_filter must be one of {FILTER_MODES}, "
                             f"got {self.topo_filter!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"QTGConfig.attention must be one of {ATTENTION_KINDS}, "
                             f"got {self.attention!r}")
        if isinstance(self.topo_k, bool) or not isinstance(self.topo_k, int) or self.topo_k < 1:
            raise ValueError(f"QTGConfig.topo_k must be a positive int, got {self.topo_k!r}")
        if self.topo_k >= self.block_size:
            raise ValueError(f"QTGConfig.topo_k={self.topo_k} must be < block_size="
                             f"{self.block_size} (the sequence length)")
        for key in ("topo_threshold", "topo_temperature", "geo_gamma_init"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"QTGConfig.{key} must be a finite number > 0, got {value!r}")
        if not 0.0 < self.geo_eps < 0.1:
            raise ValueError(f"QTGConfig.geo_eps must be in (0, 0.1), got {self.geo_eps!r}")
        if self.use_qembed and self.n_embd % 2:
            raise ValueError(f"QTGConfig.n_embd={self.n_embd} must be even with use_qembed "
                             "(n_embd / 2 complex amplitudes as [Re | Im])")

    def embedding_activation_bytes(self, b: int, s: int, elem: int) -> float:
        """The GPT's, plus QEmbed 8x and the filter's unit vectors and neighbourhoods, (k + 1)
        points + k neighbours per token: 4x(2k + 2) (see ``GPTConfig`` for the units)."""
        embed = super().embedding_activation_bytes(b, s, elem)
        x = b * s * self.n_embd
        if self.use_qembed:
            embed += 8 * x
        if self.topo_filter != "none":
            embed += 4 * x * (2 * self.topo_k + 2)
        return embed

    def block_activation_bytes(self, b: int, s: int, elem: int, device: str = "cpu") -> float:
        """Dot attention: the GPT's block. Fisher-Rao attention, instead of SDPA and QK-norm:
        query and key log-probabilities, probabilities and their square roots in float32
        (3 x 4 x 2 = 24x), v and the output in float32 (8x); on CPU (the block-causal kernel)
        the angle and probability matrices, float32 (b, heads, s, s) each: 8 * b * heads * s^2
        bytes; on CUDA (FlexAttention) no (s, s) matrix, a float32 log-sum-exp per head and
        query instead."""
        if self.attention == "dot":
            return super().block_activation_bytes(b, s, elem, device)
        scores = 4 * b * self.n_head * s if device == "cuda" else 8 * b * self.n_head * s * s
        return self.block_base_activation_bytes(b, s, elem) + (32 * (b * s * self.n_embd) + scores)

    def block_backward_bytes(self, b: int, s: int, elem: int, device: str = "cpu") -> float:
        """Dot attention: the GPT's. Fisher-Rao attention on CPU adds the float32 gradients of
        its (b, heads, s, s) probability and score matrices, 8 * b * heads * s^2 bytes (none on
        CUDA: FlexAttention's backward works block by block)."""
        base = super().block_backward_bytes(b, s, elem, device)
        if self.attention == "dot" or device == "cuda":
            return base
        return base + 8 * b * self.n_head * s * s

    def flops_terms(self, seq_len: int | None = None, batch_tokens: int = 1
                    ) -> dict[str, tuple[float, float]]:
        """The GPT's terms (see ``GPTConfig.flops_terms``) plus QTG's, per token:

        * ``qembed``: the normalisation, 3 per dim (square, sum, scale);
        * ``topo_select`` (no gradient): the (T, T) distance matmul of the causal k-NN search,
          2 C T (the sort is comparisons, not counted);
        * ``topo_filter``: mst: normalisation 3C, the neighbourhood Gram matrix 2 M^2 C (M = k + 1
          points), distances 4 M^2, Prim's k steps over M nodes 4 M^2, sigmoids 8 M, the weighted
          neighbour mean 2 k C + C; knn_mean: the mean alone;
        * Fisher-Rao attention (``attention_scores`` counts the GPT's q.k and p.v matmuls, here
          BC = a.b and p.v) adds ``geo_extra``: per score and head clamp, acos, square, scale
          (4), and the query/key distributions (log-softmax, square root, KL to uniform: 9 per
          element of q and k, 18 C).
        """
        terms = super().flops_terms(seq_len, batch_tokens)
        t, c, k = seq_len or self.block_size, self.n_embd, self.topo_k
        m = k + 1
        extra: dict[str, float] = {}
        if self.use_qembed:
            extra["qembed"] = 3 * c
        if self.topo_filter != "none":
            terms["topo_select"] = (3 * c + 2 * c * t, 0.0)
            mean = 2 * k * c + c
            extra["topo_filter"] = (mean if self.topo_filter == "knn_mean"
                                    else mean + 2 * m * m * c + 8 * m * m + 8 * m)
        if self.attention == "geo":
            keys = (t + 1) / 2
            extra["geo_extra"] = self.n_layer * (4 * self.n_head * keys + 18 * c)
        terms.update({part: (value, 2 * value) for part, value in extra.items()})
        return terms


@register("qtg", QTGConfig, shard_unit=Block)
class QTG(GPT):
    def __init__(self, config: QTGConfig) -> None:
        super().__init__(config)
        c = config
        self.qembed = QEmbed() if c.use_qembed else None
        self.topo = TopoFilter(c.topo_k, c.topo_threshold, c.topo_temperature, c.topo_filter)
        if c.use_qembed:  # start with f(x) on the unit sphere: L_quantum ~ 0 at init
            nn.init.normal_(self.wte.weight, std=1.0 / math.sqrt(c.n_embd))

    def make_attention(self, rope: RotaryEmbedding | None, linear) -> nn.Module:
        c = self.config
        if c.attention == "dot":
            return super().make_attention(rope, linear)
        return GeoSelfAttention(c.n_embd, c.n_head, c.dropout, c.bias, rope, c.geo_gamma_init,
                                c.geo_eps, linear)

    def forward(
        self, idx: torch.Tensor, start_pos: int | None = None, teacher: TeacherSignal | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, T, vocab) and the loss terms ``{"topo", "geo", "quantum"}``.

        ``start_pos`` switches to cached decoding (KV cache plus the filter's token cache).
        """
        logits, aux = super().forward(idx, start_pos, teacher)
        geo = [block.attn.geo_loss for block in self.blocks
               if isinstance(block.attn, GeoSelfAttention)]
        geo_loss = torch.stack(geo).mean() if geo else self.wte.weight.new_zeros((), dtype=torch.float32)
        return logits, {"topo": aux["topo"], "geo": geo_loss, "quantum": aux["quantum"]}

    def embed(self, idx: torch.Tensor, start_pos: int | None = None,
              teacher: TeacherSignal | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Embedding -> QEmbed -> topological filter -> positions; the ``topo`` and ``quantum``
        terms (0 when their component is off)."""
        pos0 = start_pos or 0
        x = self.wte(idx)
        quantum = self.wte.weight.new_zeros((), dtype=torch.float32)
        if self.qembed is not None:
            x, quantum = self.qembed(x)
        x, topo = self.topo(x, start_pos)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos0, pos0 + idx.size(1), device=idx.device))
        return self.drop(x), {"topo": topo, "quantum": quantum}

    def setup_kv_cache(self, batch_size: int, max_len: int | None = None,
                       device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().setup_kv_cache(batch_size, max_len, device, dtype)
        weight = self.wte.weight
        self.topo.setup_cache(batch_size, max_len or self.config.block_size, self.config.n_embd,
                              device or weight.device, dtype or weight.dtype)

    def clear_kv_cache(self) -> None:
        super().clear_kv_cache()
        self.topo.clear_cache()
