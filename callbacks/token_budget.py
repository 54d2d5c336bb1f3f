"""Stop training once a token budget is spent (compare runs at equal tokens, not steps)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class TokenBudget(Callback):
    """Sets ``trainer.should_stop`` when ``pl_module.tokens_seen >= max_tokens``.

    ``tokens_seen`` is kept by the module and saved in checkpoints, so a resumed run keeps
    counting; the stop decision is reduced across ranks so every process stops together.
    """

    def __init__(self, max_tokens: int | None = None) -> None:
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
            raise ValueError(f"TokenBudget.max_tokens must be a positive int or None, got {max_tokens!r}")
        self.max_tokens = max_tokens

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed with its budget already spent must not train another batch.
        self._check(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.max_tokens is None:
            return
        spent = getattr(pl_module, "tokens_seen", 0) >= self.max_tokens
        if trainer.strategy.reduce_boolean_decision(spent, all=False):
            trainer.should_stop = True
