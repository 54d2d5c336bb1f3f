"""``last.ckpt`` at a fixed cadence, whether or not validation has run.

Lightning's monitored ``ModelCheckpoint`` postpones a step-triggered save until the monitored
metric exists (the first validation, and again after a resume), and cannot combine a step
cadence with a time interval. This unmonitored checkpoint has neither limit: a run killed at
any point loses at most one interval of work, and ``resume=auto`` continues from its file.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lhp.errors import UserError

FRACTION_OF_MAX_STEPS = 0.1


class LastCheckpoint(ModelCheckpoint):
    """Write ``<dirpath>/last.ckpt`` every N optimizer steps, at least every M minutes, after
    every validation and when training ends.

    Args:
        dirpath: directory of ``last.ckpt`` (the run's ``checkpoints/``).
        every_n_train_steps: step cadence; None: 10 % of ``trainer.max_steps``, or
            ``default_every_n_train_steps`` when ``max_steps`` is not set.
        every_n_minutes: also save once this much wall time has passed since the last save
            (None: no time trigger).
        default_every_n_train_steps: the step cadence of runs bounded by epochs or time only.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None,
                 every_n_minutes: float | None = 15.0, default_every_n_train_steps: int = 1000) -> None:
        for name, value in (("every_n_train_steps", every_n_train_steps),
                            ("default_every_n_train_steps", default_every_n_train_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"callbacks.last_checkpoint.{name} must be a positive integer or null, "
                                f"got {value!r}")
        if every_n_minutes is not None and (isinstance(every_n_minutes, bool)
                                            or not isinstance(every_n_minutes, int | float)
                                            or not math.isfinite(every_n_minutes) or every_n_minutes <= 0):
            raise UserError("callbacks.last_checkpoint.every_n_minutes must be a positive number of "
                            f"minutes or null, got {every_n_minutes!r}")
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
                         enable_version_counter=False)
        self.every_n_train_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self.default_every_n_train_steps = default_every_n_train_steps
        self.every_n_steps = every_n_train_steps or default_every_n_train_steps

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="last")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.every_n_train_steps is None and trainer.max_steps > 0:
            self.every_n_steps = max(1, round(trainer.max_steps * FRACTION_OF_MAX_STEPS))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        due = trainer.global_step % self.every_n_steps == 0
        if self.every_n_minutes is not None:
            elapsed = time.monotonic() - (self._last_time_checked or time.monotonic())
            # rank 0 decides, so ranks whose clocks differ never disagree about a collective save
            due = trainer.strategy.broadcast(elapsed >= 60 * self.every_n_minutes) or due
        if due:
            self._save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the step, time, validation and end-of-training triggers cover it."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer)

    def _save_last(self, trainer: L.Trainer) -> None:
        # skips sanity checking, fast_dev_run, non-fit stages and a step already saved
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_time_checked = time.monotonic()


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """Path of the newest ``last.ckpt`` written by this trainer's ``LastCheckpoint`` ("" if none)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, LastCheckpoint) and cb.last_model_path:
            return cb.last_model_path
    return ""
