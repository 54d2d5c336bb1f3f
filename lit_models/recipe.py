"""What every platform LightningModule shares: AdamW + warmup-cosine from its hparams, and
exact resume (tokens seen and RNG states travel in the checkpoint).

A recipe subclasses ``TrainingRecipe`` (before ``L.LightningModule`` in the bases), sets
``self.net``, ``self.tokens_seen = 0`` and ``self._rng_to_restore = None`` in ``__init__``, and
stores ``optimizer`` / ``scheduler`` dicts in its hparams; ``OPTIMIZER_DEFAULTS`` fills keys the
config leaves out.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch

from lit_models.optim import build_optimizer, warmup_cosine


def _capture_rng() -> dict[str, Any]:
    """RNG states as tensors/lists only, so checkpoints load with ``weights_only=True``."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class TrainingRecipe:
    """Mixin for LightningModules: optimizer/scheduler from hparams and exact-resume hooks."""

    OPTIMIZER_DEFAULTS: ClassVar[dict[str, Any]] = {
        "lr": 3e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
    SCHEDULER_DEFAULTS: ClassVar[dict[str, Any]] = {"warmup_steps": 100, "min_lr_ratio": 0.1}

    def configure_optimizers(self) -> dict:
        opt_cfg = {**self.OPTIMIZER_DEFAULTS, **self.hparams.optimizer}
        sched_cfg = {**self.SCHEDULER_DEFAULTS, **self.hparams.scheduler}
        optimizer = build_optimizer(self.net, **opt_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(int(sched_cfg["warmup_steps"]), max(total - 1, 0))
        schedule = partial(warmup_cosine, warmup_steps=warmup, total_steps=total,
                           min_lr_ratio=float(sched_cfg["min_lr_ratio"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["rng_states"] = _capture_rng()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restore RNG right before the first resumed step: the exact point it was captured at.
        if self._rng_to_restore is not None:
            _restore_rng(self._rng_to_restore)
            self._rng_to_restore = None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
