"""Stop a run the moment it diverges, before anything of the diverged state is saved."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lhp.errors import TrainingDiverged


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """Newest checkpoint file on disk of this run (or the one it resumed from), if any."""
    paths = {getattr(cb, attr, "") for cb in trainer.checkpoint_callbacks
             for attr in ("last_model_path", "best_model_path")}
    paths.add(trainer.ckpt_path or "")
    existing = [p for p in paths if p and os.path.isfile(p)]
    return max(existing, key=os.path.getmtime, default=None)


class DivergenceGuard(Callback):
    """Raise ``TrainingDiverged`` as soon as the training loss or a logged ``val/`` or ``test/``
    metric is NaN or infinite, and refuse to save a checkpoint whose weights are not finite.

    Lightning runs checkpoint callbacks after all others, so raising in ``on_train_batch_end`` /
    ``on_validation_end`` stops the run before a checkpoint of that step is written. A step with
    a finite loss can still blow the weights up; ``on_save_checkpoint`` catches that case before
    the file is written. The message names the step, the metric and the last good checkpoint.
    Decisions are reduced across ranks, so every process stops together (the training loss
    check costs one tiny all-reduce per step under DDP).
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            value = f"{loss.detach().float().item():g}" if bad else "non-finite on another rank"
            self._stop(trainer, f"train/loss = {value}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_metrics(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_metrics(trainer, "test/")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        params = [p.detach() for p in pl_module.parameters() if p.is_floating_point()]
        finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            names = [n for n, p in pl_module.named_parameters()
                     if p.is_floating_point() and not bool(torch.isfinite(p).all())]
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self._stop(trainer, f"the weights ({shown or 'on another rank'}) are not finite "
                                "after the optimizer step")

    def _check_metrics(self, trainer: L.Trainer, prefix: str) -> None:
        bad = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(prefix) and not math.isfinite(float(v))}
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            shown = ", ".join(f"{k} = {v:g}" for k, v in sorted(bad.items())) or "non-finite on another rank"
            self._stop(trainer, shown)

    @staticmethod
    def _stop(trainer: L.Trainer, what: str) -> None:
        good = last_good_checkpoint(trainer)
        where = (f"last good checkpoint: {good} (resume from it with ckpt_path={good}, or start "
                 "again with a lower model.optimizer.lr or trainer.gradient_clip_val)" if good
                 else "no checkpoint was saved before the divergence: start again with a lower "
                      "model.optimizer.lr or trainer.gradient_clip_val")
        raise TrainingDiverged(f"training diverged at step {trainer.global_step}: {what}; the run "
                               f"was stopped and nothing of the diverged state was saved; {where}")
