"""FractalDecoder: a book as a function, character position x in [0, 1] -> character logits.

    x -> [x, sin(f_k x), cos(f_k x)]_k -> h_0 -> h_1 -> ... -> h_T -> logits
    h_{t+1} = (1 - alpha) h_t + alpha tanh(Block(h_t, z))      (one weight-shared Block, T times)

``z`` is a learned key per book (an embedding table) that enters every iteration, so one core
can hold several books and a new book can be added by training only its key.

V3/V5/V7/V8 of the write-up are configs of this one model (``conf/model/fractal_v*.yaml``):

- V3: linear Fourier frequencies ``f_k = base (k + 1)``, no key, dense updates.
- V5: octave frequencies ``f_k = base growth^k``, a key ``z``, sparse updates.
- V7 (our reading of "better spectral stability, more stable optimization of depth T"):
  V5 + ``spectral_norm`` on the block's two matrices (each map has Lipschitz constant <= 1, so
  the iterated map cannot blow up) + ``depth_warmup_steps`` (training starts at depth 1 and
  adds iterations linearly until T).
- V8 (our reading of "support for larger vocabularies"): V7 + ``head="factorized"``, logits
  ``(h U) E^T`` through a rank-``head_rank`` bottleneck, so the head grows as ``head_rank * V``
  instead of ``n_embd * V``.

Sparse updates (``update_fraction < 1``): at every iteration each position updates only the
``k = ceil(update_fraction * n_embd)`` units whose proposed change ``|tanh(Block(h, z)) - h|``
is largest; all other units keep their value (they are static at that step). The block is
still computed densely, so this saves no FLOPs on dense hardware: it is a stability/capacity
rule, and the ablation study measures what it buys.

Float precision: features are computed in float64 from float64 coordinates. With ``x = i/(N-1)``
and the highest frequency about ``pi N``, float32 would leave ~1 radian of phase error for
N = 5M characters (its 24-bit mantissa cannot even separate neighbouring x near 1); in float64
the phase error is ~1e-9 rad. Only the finished features are cast to the network's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from lit_models.archs.registry import COORDINATE_ARCHITECTURES, register

SPACINGS = ("linear", "octave")
HEADS = ("linear", "factorized")


@dataclass
class FractalConfig:
    vocab_size: int
    num_books: int = 1              # rows of the key table (books trained jointly)
    n_embd: int = 256               # width of the state h
    block_hidden: int = 512         # hidden width inside the shared block
    depth: int = 4                  # T: iterations of the shared block
    alpha: float = 0.5              # mixing coefficient of each iteration
    n_frequencies: int = 20         # K: Fourier frequencies (features: 1 + 2K)
    frequency_spacing: str = "octave"  # "linear": f_k = base (k+1); "octave": base growth^k
    base_frequency: float = math.pi
    growth: float = 2.0
    key_dim: int = 64               # dimension of the per-book key z (0: no key)
    update_fraction: float = 1.0    # sparse updates: share of units updated per iteration
    spectral_norm: bool = False     # V7: spectral normalization of the block's matrices
    depth_warmup_steps: int = 0     # V7: train at depth 1 -> T over this many steps (0: off)
    head: str = "linear"            # "linear" | "factorized" (V8)
    head_rank: int = 64             # bottleneck of the factorized head

    def __post_init__(self) -> None:
        for key in ("vocab_size", "num_books", "n_embd", "block_hidden", "depth",
                    "n_frequencies", "head_rank"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"FractalConfig.{key} must be a positive int, got {value!r}")
        for key in ("key_dim", "depth_warmup_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"FractalConfig.{key} must be an int >= 0, got {value!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"FractalConfig.alpha must be in (0, 1], got {self.alpha}")
        if not 0.0 < self.update_fraction <= 1.0:
            raise ValueError(
                f"FractalConfig.update_fraction must be in (0, 1], got {self.update_fraction}")
        if self.frequency_spacing not in SPACINGS:
            raise ValueError(f"FractalConfig.frequency_spacing must be one of {SPACINGS}, "
                             f"got {self.frequency_spacing!r}")
        if self.head not in HEADS:
            raise ValueError(f"FractalConfig.head must be one of {HEADS}, got {self.head!r}")
        if not (self.base_frequency > 0 and math.isfinite(self.base_frequency)):
            raise ValueError(f"FractalConfig.base_frequency must be > 0, got {self.base_frequency}")
        if self.frequency_spacing == "octave" and not self.growth > 1.0:
            raise ValueError(f"FractalConfig.growth must be > 1 for octave spacing, got {self.growth}")

    @property
    def n_features(self) -> int:
        return 1 + 2 * self.n_frequencies

    @property
    def units_updated(self) -> int:
        """Units each position updates per iteration (all of them when updates are dense)."""
        return max(1, math.ceil(self.update_fraction * self.n_embd))

    def frequencies(self) -> torch.Tensor:
        """The K angular frequencies (float64)."""
        k = torch.arange(self.n_frequencies, dtype=torch.float64)
        if self.frequency_spacing == "linear":
            return self.base_frequency * (k + 1)
        return self.base_frequency * self.growth ** k


def fourier_features(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``[x, sin(f_k x), cos(f_k x)]`` computed in float64 (see the module docstring), (B, 1+2K)."""
    x = coords.to(torch.float64).unsqueeze(-1)
    phase = x * freqs.to(device=x.device, dtype=torch.float64)
    return torch.cat([x, torch.sin(phase), torch.cos(phase)], dim=-1)


class FractalBlock(nn.Module):
    """``Block(h, z) = W_out gelu(W_in h + W_z z)``: the one set of weights that is iterated."""

    def __init__(self, c: FractalConfig) -> None:
        super().__init__()
        self.w_in = nn.Linear(c.n_embd, c.block_hidden)
        self.w_z = nn.Linear(c.key_dim, c.block_hidden, bias=False) if c.key_dim else None
        self.w_out = nn.Linear(c.block_hidden, c.n_embd)
        if c.spectral_norm:
            spectral_norm(self.w_in)
            spectral_norm(self.w_out)

    def forward(self, h: torch.Tensor, z_proj: torch.Tensor | None) -> torch.Tensor:
        u = self.w_in(h)
        if z_proj is not None:
            u = u + z_proj
        return self.w_out(nn.functional.gelu(u, approximate="tanh"))


@register("fractal", FractalConfig, table=COORDINATE_ARCHITECTURES)
class FractalDecoder(nn.Module):
    def __init__(self, config: FractalConfig) -> None:
        super().__init__()
        self.config = c = config
        # Derived from the config, so not stored in checkpoints or library files.
        self.register_buffer("freqs", c.frequencies(), persistent=False)
        self.in_proj = nn.Linear(c.n_features, c.n_embd)
        self.keys = nn.Embedding(c.num_books, c.key_dim) if c.key_dim else None
        self.block = FractalBlock(c)
        self.ln_f = nn.LayerNorm(c.n_embd)
        if c.head == "linear":
            self.head = nn.Linear(c.n_embd, c.vocab_size)
        else:
            self.head = nn.Sequential(nn.Linear(c.n_embd, c.head_rank, bias=False),
                                      nn.Linear(c.head_rank, c.vocab_size))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            weight = module.parametrizations.weight.original if parametrize.is_parametrized(
                module, "weight") else module.weight
            nn.init.normal_(weight, mean=0.0, std=1.0 / math.sqrt(module.in_features))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def active_depth(self, step: int | None) -> int:
        """Iterations used at training step ``step`` (depth warm-up); the full T otherwise."""
        c = self.config
        if step is None or not c.depth_warmup_steps or step >= c.depth_warmup_steps:
            return c.depth
        return min(c.depth, 1 + (c.depth - 1) * step // c.depth_warmup_steps)

    def _key_projection(self, book_id: torch.Tensor | None, z: torch.Tensor | None,
                        batch: int) -> torch.Tensor | None:
        if self.block.w_z is None:
            return None
        if z is None:
            if book_id is None:
                raise ValueError("FractalDecoder with key_dim > 0 needs book_id (or z)")
            z = self.keys(book_id)
        elif z.dim() == 1:
            z = z.expand(batch, -1)
        return self.block.w_z(z)

    def _step(self, h: torch.Tensor, z_proj: torch.Tensor | None) -> torch.Tensor:
        proposal = torch.tanh(self.block(h, z_proj))
        delta = proposal - h
        c = self.config
        if c.units_updated < c.n_embd:
            top = delta.detach().abs().topk(c.units_updated, dim=-1).indices
            mask = torch.zeros_like(delta).scatter_(-1, top, 1.0)
            delta = delta * mask
        return h + c.alpha * delta  # = (1 - alpha) h + alpha tanh(Block(h, z)) on updated units

    def states(self, coords: torch.Tensor, book_id: torch.Tensor | None = None,
               depth: int | None = None, z: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``[h_0, ..., h_T]`` for the given positions (for the hidden-state picture)."""
        if coords.dim() != 1:
            raise ValueError(f"coords must be a 1-D tensor of positions in [0, 1], got {tuple(coords.shape)}")
        dtype = self.in_proj.weight.dtype
        h = self.in_proj(fourier_features(coords, self.freqs).to(dtype))
        z_proj = self._key_projection(book_id, z, coords.size(0))
        out = [h]
        # Spectral norm: one power iteration per forward, shared by the T iterations.
        with parametrize.cached():
            for _ in range(self.config.depth if depth is None else depth):
                h = self._step(h, z_proj)
                out.append(h)
        return out

    def forward(self, coords: torch.Tensor, book_id: torch.Tensor | None = None,
                depth: int | None = None, z: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, vocab) for positions ``coords`` (B,) of books ``book_id`` (B,).

        ``z`` (key_dim,) or (B, key_dim) replaces the key table (used to fit a new book's key
        against a frozen core). Returns the (empty) dict of regularizer terms, as every
        architecture of the registry does.
        """
        h = self.states(coords, book_id, depth, z)[-1]
        return self.head(self.ln_f(h)), {}
