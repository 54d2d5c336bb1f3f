"""Fit a bigram model on the training tokens and log its validation loss beside the model's.

A language model that cannot beat ``baseline/bigram_val_loss`` has learned nothing beyond
adjacent-token statistics; train() prints the comparison at the end of every run.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lit_models.baselines import bigram_cross_entropy

log = logging.getLogger(__name__)
_info, _warn = rank_zero_only(log.info), rank_zero_only(log.warning)  # once per run, not per rank


class BigramBaseline(Callback):
    """Needs a datamodule with ``train_tokens()`` and ``val_tokens()`` (1-D token streams) and
    ``vocab_size``; otherwise it logs why it was skipped and does nothing."""

    def __init__(self) -> None:
        self.val_loss: float | None = None

    def state_dict(self) -> dict:
        return {"val_loss": self.val_loss}

    def load_state_dict(self, state: dict) -> None:
        self.val_loss = state.get("val_loss")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if self.val_loss is None:
            if not (hasattr(dm, "train_tokens") and hasattr(dm, "val_tokens")):
                _warn("BigramBaseline: datamodule has no train_tokens()/val_tokens(); skipped")
                return
            stream, train = dm.val_tokens(), dm.train_tokens()
            if stream.numel() < 2 or train.numel() < 2:
                _warn("BigramBaseline: no training/validation token stream; skipped")
                return
            self.val_loss, alpha = bigram_cross_entropy(
                train, stream[:-1], stream[1:], dm.vocab_size
            )
            _info(f"Bigram baseline (add-{alpha:g} smoothing): val loss {self.val_loss:.4f} nats/token")
        for lg in trainer.loggers:
            lg.log_metrics({"baseline/bigram_val_loss": self.val_loss}, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning rebuilds callback_metrics during fit; expose the baseline once fit is over.
        if self.val_loss is not None:
            trainer.callback_metrics["baseline/bigram_val_loss"] = torch.tensor(self.val_loss)
