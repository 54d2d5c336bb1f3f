"""GPT baseline: pre-LN causal transformer (nanoGPT/litgpt style), one readable file.

Switches: learned or rotary positions, QK-norm attention, tied input/output embeddings,
dense or hypercomplex (PHM, ``linear="phm"``, ``phm_n``) projections in attention and MLP, and
``activation_checkpointing`` (each block recomputed in backward: same numbers, less memory).
Attention runs on PyTorch SDPA; a KV cache serves generation.

It is also the backbone the other token architectures build on (QTG, Indra): they override
the hooks ``make_input`` / ``make_attention`` / ``make_head`` (what is built), ``embed`` /
``head`` (the input and output stages of ``forward``) and, on the config,
``embedding_activation_bytes`` / ``block_activation_bytes`` (their memory for the VRAM budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_models.archs.registry import TeacherSignal, register
from lit_models.components import (
    MLP,
    Block,
    CausalSelfAttention,
    KVCache,
    PHMLinear,
    RotaryEmbedding,
    make_linear,
)
from lit_models.components.phm import LINEAR_KINDS


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    pos_embedding: str = "learned"  # "learned" | "rope"
    rope_base: float = 10000.0
    qk_norm: bool = False
    tie_embeddings: bool = True
    linear: str = "dense"  # "dense" | "phm" (sum of phm_n Kronecker products, 1/phm_n params)
    phm_n: int = 4
    activation_checkpointing: bool = False  # recompute each block in backward (saves memory)

    def __post_init__(self) -> None:
        name = type(self).__name__  # subclasses (QTGConfig) reuse these checks
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}.{key} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"{name}.n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        if self.pos_embedding not in ("learned", "rope"):
            raise ValueError(
                f"{name}.pos_embedding must be 'learned' or 'rope', got {self.pos_embedding!r}"
            )
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"{name}: rotary positions need an even head dim, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"{name}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.linear not in LINEAR_KINDS:
            raise ValueError(f"{name}.linear must be one of {LINEAR_KINDS}, got {self.linear!r}")
        if self.linear == "phm":
            if not isinstance(self.phm_n, int) or self.phm_n < 1:
                raise ValueError(f"{name}.phm_n must be a positive int, got {self.phm_n!r}")
            if self.n_embd % self.phm_n or self.mlp_hidden % self.phm_n:
                raise ValueError(f"{name}.phm_n={self.phm_n} must divide n_embd={self.n_embd} "
                                 f"and the MLP width {self.mlp_hidden}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.n_embd)

    # ------------------------------------------------------------ activation memory
    # Bytes autograd saves for backward, for callbacks/vram_budget.py (after Korthikanti et al.
    # 2023). ``b`` micro-batch, ``s`` sequence length, ``elem`` activation element size (2 under
    # mixed precision: the residual stream and LayerNorm inputs stay float32, 4, under autocast);
    # ``x = b*s*n_embd`` elements, so ``4x`` is four bytes per element of a (b, s, h) tensor.

    def embedding_activation_bytes(self, b: int, s: int, elem: int) -> float:
        """Embedding output 4x, its dropout mask 1x when dropout > 0."""
        drop = 1 if self.dropout > 0 else 0
        return (4 + drop) * (b * s * self.n_embd)

    def block_base_activation_bytes(self, b: int, s: int, elem: int) -> float:
        """A block outside its attention kernel: LN1 input 4x, QKV input ex, output projection
        input ex, LN2 input 4x, MLP input ex, GELU input and output 2*e*f/h x (f = MLP width),
        dropout masks 1x each (attention and MLP outputs) when dropout > 0."""
        drop = 1 if self.dropout > 0 else 0
        return (4 + elem + elem + 4 + elem + 2 * elem * (self.mlp_hidden / self.n_embd)
                + 2 * drop) * (b * s * self.n_embd)

    def block_activation_bytes(self, b: int, s: int, elem: int, device: str = "cpu") -> float:
        """One block: the base, QK-norm inputs 2ex, and SDPA (flash / memory-efficient kernels):
        q, k, v and output 4ex plus a float32 log-sum-exp per head and query."""
        x = b * s * self.n_embd
        block = self.block_base_activation_bytes(b, s, elem)
        if self.qk_norm:
            block += 2 * elem * x
        return block + (4 * elem * x + 4 * b * self.n_head * s)

    def head_activation_bytes(self, b: int, s: int, elem: int) -> float:
        """The head: final LN input 4x, head input ex, float32 log-softmax output 4*b*s*V."""
        return (4 + elem) * (b * s * self.n_embd) + 4 * b * s * self.vocab_size

    def loss_transient_bytes(self, b: int, s: int, elem: int) -> float:
        """Live beside every saved activation when the loss's backward starts: the logits the
        training step holds (e*b*s*V; under mixed precision their float32 copy for the loss is
        freed once the log-softmax is saved) and the float32 gradients of the log-softmax output
        and input, 8*b*s*V."""
        return (elem + 8) * b * s * self.vocab_size

    def block_backward_bytes(self, b: int, s: int, elem: int, device: str = "cpu") -> float:
        """Temporaries of one block's backward beside the saved activations: the incoming and
        outgoing residual gradients 8x, the MLP's hidden gradient 2*e*f/h x (f = MLP width) and,
        for SDPA, the q, k, v gradients 3ex (the fused kernels keep no (s, s) matrix)."""
        return (8 + 2 * elem * self.mlp_hidden / self.n_embd + 3 * elem) * (b * s * self.n_embd)

    def activation_bytes(self, b: int, s: int, elem: int, checkpointing: bool | None = None,
                         device: str = "cpu") -> tuple[int, int]:
        """(saved activations, backward transient) in bytes for one micro-batch.

        Saved: the embeddings, every block and the head as above. With ``checkpointing``
        (default: the config's ``activation_checkpointing``) each block keeps only its input
        (4x) and one block is live again during its recomputation. Transient: the larger of the
        loss's (``loss_transient_bytes``) and one block's backward (``block_backward_bytes``).
        ``device`` ("cpu" or "cuda") names the kernels the blocks use where that matters (QTG).
        """
        if checkpointing is None:
            checkpointing = self.activation_checkpointing
        x = b * s * self.n_embd
        block = self.block_activation_bytes(b, s, elem, device)
        layers = (4 * x * self.n_layer + block) if checkpointing else block * self.n_layer
        saved = (self.embedding_activation_bytes(b, s, elem) + layers
                 + self.head_activation_bytes(b, s, elem))
        transient = max(self.loss_transient_bytes(b, s, elem),
                        self.block_backward_bytes(b, s, elem, device))
        return int(saved), int(transient)

    # ------------------------------------------------------------ compute
    # Training FLOPs per token, analytic, for equal-compute comparisons (budget.flops, the
    # compare report's FLOPs axis). Convention: 2 FLOPs per multiply-add of every matmul; the
    # backward of an op with gradients costs 2x its forward (gradients of input and weight);
    # attention counts only the (T + 1) / 2 keys a query sees on average under the causal mask.
    # Biases, LayerNorms, GELU and softmax are left out for the GPT (< 2 % at these widths);
    # what an architecture adds on top of the GPT is counted, element-wise work included
    # (1 FLOP per arithmetic or transcendental op), in its own config's ``flops_terms``.

    def flops_terms(self, seq_len: int | None = None, batch_tokens: int = 1
                    ) -> dict[str, tuple[float, float]]:
        """``{part: (forward, backward)}`` FLOPs per training token at sequence length
        ``seq_len`` (default ``block_size``); ``batch_tokens`` (tokens per optimizer step)
        spreads per-step work over the batch (the PHM layers build their dense weights once a
        step)."""
        t = seq_len or self.block_size
        c, f, n_layer = self.n_embd, self.mlp_hidden, self.n_layer
        keys = (t + 1) / 2
        fwd = {
            "attention_proj": n_layer * 2 * (3 * c * c + c * c),  # qkv and output projection
            "attention_scores": n_layer * 2 * 2 * c * keys,       # q.k and probs @ v
            "mlp": n_layer * 2 * 2 * c * f,
            "head": 2 * c * self.vocab_size,
        }
        if self.linear == "phm":  # W = sum_i kron(A_i, S_i): phm_n multiply-adds per weight
            fwd["phm_weights"] = n_layer * 2 * self.phm_n * (4 * c * c + 2 * c * f) / batch_tokens
        return {part: (value, 2 * value) for part, value in fwd.items()}

    def training_flops_per_token(self, seq_len: int | None = None, batch_tokens: int = 1) -> float:
        """Forward + backward FLOPs per training token (the sum of :meth:`flops_terms`)."""
        return float(sum(f + b for f, b in self.flops_terms(seq_len, batch_tokens).values()))


@register("gpt", GPTConfig, shard_unit=Block)
class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.make_input()
        rope = (
            RotaryEmbedding(c.head_dim, c.block_size, c.rope_base)
            if c.pos_embedding == "rope" else None
        )
        self.drop = nn.Dropout(c.dropout)
        linear = partial(make_linear, kind=c.linear, phm_n=c.phm_n)
        self.blocks = nn.ModuleList(
            Block(
                c.n_embd,
                self.make_attention(rope, linear),
                MLP(c.n_embd, c.mlp_hidden, c.dropout, c.bias, linear),
                bias=c.bias,
            )
            for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.make_head()
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.blocks.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        for name, m in self.blocks.named_modules():  # the same two scales for hypercomplex layers
            if isinstance(m, PHMLinear):
                m.reset_parameters(0.02 / math.sqrt(2 * c.n_layer) if name.endswith("proj") else 0.02)

    # ---------------------------------------------------------- what is built (hooks)
    def make_input(self) -> None:
        """Token (and learned position) embeddings; a hook for subclasses (Indra's projector)."""
        c = self.config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd) if c.pos_embedding == "learned" else None

    def make_attention(self, rope: RotaryEmbedding | None, linear) -> nn.Module:
        """Each block's attention; a hook for subclasses (QTG swaps in Fisher-Rao attention)."""
        c = self.config
        return CausalSelfAttention(c.n_embd, c.n_head, c.dropout, c.bias, c.qk_norm, rope, linear)

    def make_head(self) -> None:
        """The output projection, tied to the token embedding by default; a hook (Indra)."""
        self.lm_head = nn.Linear(self.config.n_embd, self.config.vocab_size, bias=False)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` drops position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    # ------------------------------------------------------------------ forward
    def forward(
        self, idx: torch.Tensor, start_pos: int | None = None, teacher: TeacherSignal | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, T, vocab) and the dict of regularizer terms (empty for the GPT).

        ``start_pos`` switches to cached decoding: ``idx`` holds tokens at absolute positions
        ``start_pos..start_pos+T-1`` and keys/values are appended to the KV cache. ``teacher``
        reaches ``embed`` for architectures with teacher-aligned terms (ignored here).
        """
        pos0 = start_pos or 0
        if pos0 + idx.size(1) > self.config.block_size:
            raise ValueError(
                f"sequence of {pos0 + idx.size(1)} tokens exceeds block_size={self.config.block_size}"
            )
        x, aux = self.embed(idx, start_pos, teacher)
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # keep only the block's input; recompute the rest in backward
                x = checkpoint(block, x, start_pos, use_reentrant=False)
            else:
                x = block(x, start_pos=start_pos)
        return self.head(self.ln_f(x)), aux

    def embed(self, idx: torch.Tensor, start_pos: int | None = None,
              teacher: TeacherSignal | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Input stage: tokens -> the first block's input, and the loss terms it defines."""
        pos0 = start_pos or 0
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos0, pos0 + idx.size(1), device=idx.device))
        return self.drop(x), {}

    def head(self, u: torch.Tensor) -> torch.Tensor:
        """Output stage: the final LayerNorm's output -> logits."""
        return self.lm_head(u)

    def diagnostics(self, idx: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalars a recipe may log as ``train/<name>`` (no gradient), over positions ``mask``;
        none for the GPT (Indra: its magnitude salience and phase dispersion)."""
        return {}

    # --------------------------------------------------------------- generation
    def setup_kv_cache(self, batch_size: int, max_len: int | None = None,
                       device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        max_len = max_len or self.config.block_size
        weight = self.wte.weight
        for block in self.blocks:
            block.attn.kv_cache = KVCache(
                batch_size, self.config.n_head, max_len, self.config.head_dim,
                device=device or weight.device, dtype=dtype or weight.dtype,
            )

    def clear_kv_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None
