"""Autoregressive sampling for any registered token architecture, with or without KV cache."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator | None, top_p: float | None = None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:  # nucleus: the smallest set whose mass reaches top_p
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered.float(), dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before a token already reached top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _check_sampling(max_new_tokens: int, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive int or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


@torch.inference_mode()
def iter_generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B, 1), up to ``max_new_tokens`` times (streaming).

    The same decoding as :func:`generate` (which is built on it). Closing the iterator early
    (``break``, ``close()``) frees the KV cache and restores the model's train/eval mode.
    """
    _check_sampling(max_new_tokens, top_k, top_p)
    block_size = model.config.block_size
    was_training = model.training
    model.eval()
    pos = None  # cache fill level; None = cache must be (re)built from the window
    if use_cache:
        model.setup_kv_cache(idx.size(0), block_size)
    try:
        for _ in range(max_new_tokens):
            window = idx[:, -block_size:]
            if not use_cache:
                logits, _ = model(window)
            elif pos is not None and pos < block_size:
                logits, _ = model(idx[:, -1:], start_pos=pos)
                pos += 1
            else:  # prefill (first step, or the window slid past the cache's positions)
                logits, _ = model(window, start_pos=0)
                pos = window.size(1)
                if pos == block_size:
                    pos = None  # full: the next step must re-encode the slid window
            nxt = _sample(logits[:, -1, :], temperature, top_k, generator, top_p)
            idx = torch.cat([idx, nxt], dim=1)
            yield nxt
    finally:
        if use_cache:
            model.clear_kv_cache()
        model.train(was_training)


@torch.inference_mode()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` tokens; ``temperature=0`` is greedy.

    With ``use_cache`` the prompt is encoded once and each step feeds one token. Once the
    context window (``model.config.block_size``) is full, both paths condition on the last
    ``block_size`` tokens, so cached and uncached decoding give identical tokens. ``top_p``
    keeps the smallest set of tokens whose probability reaches it (nucleus sampling).
    """
    _check_sampling(max_new_tokens, top_k, top_p)
    steps = iter_generate(model, idx, max_new_tokens, temperature, top_k, use_cache, generator, top_p)
    new = []
    for nxt in steps:
        new.append(nxt)
        if eos_id is not None and bool((nxt == eos_id).all()):
            steps.close()
            break
    return torch.cat([idx, *new], dim=1)
