"""Count-based reference models that every neural model must beat."""

from __future__ import annotations

import math

import torch


def bigram_cross_entropy(
    train_tokens: torch.Tensor,
    eval_prev: torch.Tensor,
    eval_next: torch.Tensor,
    vocab_size: int,
    alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0),
) -> tuple[float, float]:
    """Mean cross-entropy (nats) of an add-alpha bigram model fitted on ``train_tokens``.

    Scores the (previous, next) pairs ``eval_prev -> eval_next``. Returns ``(ce, alpha)`` for the
    best alpha on these pairs: the strongest bigram, so beating it is a conservative claim.
    Pair counts use ``torch.unique`` (memory grows with distinct pairs, not vocab^2).
    """
    train_tokens = train_tokens.long()
    pairs, counts = torch.unique(train_tokens[:-1] * vocab_size + train_tokens[1:],
                                 return_counts=True)
    prev_counts = torch.bincount(train_tokens[:-1], minlength=vocab_size).double()
    query = eval_prev.long() * vocab_size + eval_next.long()
    idx = torch.searchsorted(pairs, query).clamp(max=max(len(pairs) - 1, 0))
    pair_counts = torch.where(pairs[idx] == query, counts[idx], 0).double()
    ctx = prev_counts[eval_prev.long()]
    best = (math.inf, alphas[0])
    for alpha in alphas:
        logp = torch.log(pair_counts + alpha) - torch.log(ctx + alpha * vocab_size)
        best = min(best, (-logp.mean().item(), alpha))
    return best
