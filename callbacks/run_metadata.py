"""Store what evaluate/generate/resume need inside every checkpoint.

``checkpoint["platform"]`` holds the resolved config, the tokenizer spec, the W&B run id (so a
resumed run continues the same W&B run) and the git commit. Plain types only, so checkpoints
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger


class RunMetadata(Callback):
    def __init__(self, config: dict[str, Any] | None = None, git_commit: str | None = None) -> None:
        self.config = config or {}
        self.git_commit = git_commit

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        dm = getattr(trainer, "datamodule", None)
        tokenizer = getattr(dm, "tokenizer", None)
        wandb_ids = [lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        checkpoint["platform"] = {
            "config": self.config,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
            "wandb_run_id": wandb_ids[0] if wandb_ids else None,
            "git_commit": self.git_commit,
        }
