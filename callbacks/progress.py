"""Lightning's RichProgressBar, counting optimizer steps when a run is bounded by ``max_steps``.

Training by steps sets ``max_epochs=-1``, and Lightning's bar then reads ``Epoch 0/-2``. This one
reads ``step N/max_steps`` (``· epoch E`` added after the first epoch) whenever ``max_steps > 0``,
and keeps Lightning's ``Epoch E/M`` otherwise.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            return super()._get_train_description(current_epoch)
        text = f"step {self.trainer.global_step}/{max_steps}"
        if current_epoch:
            text += f" · epoch {current_epoch}"
        return f"{text:{len(self.validation_description)}}"  # no flicker beside "Validation"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
