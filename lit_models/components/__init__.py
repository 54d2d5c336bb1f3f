"""Reusable nn.Module building blocks shared by architectures (no Lightning imports here)."""

from lit_models.components.attention import CausalSelfAttention, KVCache
from lit_models.components.block import Block
from lit_models.components.mlp import MLP
from lit_models.components.phm import PHMLinear, make_linear
from lit_models.components.rope import RotaryEmbedding

__all__ = ["MLP", "Block", "CausalSelfAttention", "KVCache", "PHMLinear", "RotaryEmbedding",
           "make_linear"]
