"""Stop training once a token or FLOPs budget is spent (compare runs at equal data or compute).

The FLOPs of a run are ``tokens_seen x flops_per_token``, the architecture's analytic training
FLOPs per token (``GPTConfig.flops_terms`` and its overrides), which the module sets at setup.
With ``fit_schedule`` the learning-rate schedule ends where the budget stops the run (each
architecture gets its whole warmup + cosine decay within its budget); without it the budget
only stops the run, on the schedule of ``trainer.max_steps``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lhp.errors import UserError


def _check_positive(key: str, value: Any, kinds: tuple[type, ...]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)
                              or not math.isfinite(value) or value <= 0):
        raise UserError(f"callbacks.token_budget.{key} must be a positive number or null, "
                        f"got {value!r}")


class TokenBudget(Callback):
    """Sets ``trainer.should_stop`` once ``tokens_seen >= max_tokens`` or the training FLOPs
    reach ``max_flops`` (whichever comes first).

    ``tokens_seen`` is kept by the module and saved in checkpoints, so a resumed run keeps
    counting; the stop decision is reduced across ranks so every process stops together.
    ``schedule_steps(module)`` is what the recipe reads (duck-typed: lit_models sits below
    callbacks) to end its schedule at the budget when ``fit_schedule`` is set.
    """

    def __init__(self, max_tokens: int | None = None, max_flops: float | None = None,
                 fit_schedule: bool = False) -> None:
        _check_positive("max_tokens", max_tokens, (int,))
        _check_positive("max_flops", max_flops, (int, float))
        self.max_tokens = max_tokens
        self.max_flops = None if max_flops is None else float(max_flops)
        self.fit_schedule = bool(fit_schedule)
        self._tokens_per_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage == "fit" and dm is not None and hasattr(dm, "batch_size") and hasattr(dm, "block_size"):
            self._tokens_per_step = (dm.batch_size * dm.block_size * trainer.world_size
                                     * trainer.accumulate_grad_batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.max_flops is not None and not getattr(pl_module, "flops_per_token", None):
            raise UserError(f"callbacks.token_budget.max_flops is set but {type(pl_module).__name__} "
                            "does not count its FLOPs per token: budget it by max_tokens")
        # A run resumed with its budget already spent must not train another batch.
        self._check(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._check(trainer, pl_module)

    def token_limit(self, pl_module: L.LightningModule) -> float | None:
        """The tokens this budget allows (the smaller of both limits; None: no budget)."""
        limits = [] if self.max_tokens is None else [float(self.max_tokens)]
        per_token = getattr(pl_module, "flops_per_token", None)
        if self.max_flops is not None and per_token:
            limits.append(self.max_flops / per_token)
        return min(limits) if limits else None

    def schedule_steps(self, pl_module: L.LightningModule) -> int | None:
        """Optimizer steps until the budget stops the run, when ``fit_schedule`` (else None)."""
        limit = self.token_limit(pl_module)
        if not self.fit_schedule or limit is None or not self._tokens_per_step:
            return None
        return max(1, math.ceil(limit / self._tokens_per_step))

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        limit = self.token_limit(pl_module)
        if limit is None:
            return
        spent = getattr(pl_module, "tokens_seen", 0) >= limit
        if trainer.strategy.reduce_boolean_decision(spent, all=False):
            trainer.should_stop = True
