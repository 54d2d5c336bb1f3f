"""Check that every rank of a multi-process run holds the same training state.

A desynchronised rank (a callback that decided differently, a token count that drifted, a
replica whose weights diverged) trains silently wrong under DDP and hangs or corrupts under
FSDP. At every validation end and at the end of fit this callback gathers a fingerprint of each
rank's state and stops the run with the differing items named. One ``all_gather_object`` per
check; nothing happens in a single process.

Fingerprinted: global step, ``tokens_seen``, ``should_stop``, learning rates, the KD weights, the
``state_dict`` of every other callback, and a digest of the replicated (non-sharded) weights.
"""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def _weights_digest(module: torch.nn.Module) -> str:
    """Digest of the parameters every rank holds in full (DTensor shards differ by design)."""
    from torch.distributed.tensor import DTensor

    h = hashlib.blake2b(digest_size=16)
    for name, p in module.named_parameters():
        if not isinstance(p, DTensor):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankConsistency(Callback):
    """Raise when the ranks' training state differs (see module doc); ``checks`` counts passes."""

    def __init__(self, weights: bool = True) -> None:
        self.weights = weights
        self.checks = 0

    def fingerprint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        items: dict[str, Any] = {
            "global_step": trainer.global_step,
            "tokens_seen": getattr(pl_module, "tokens_seen", None),
            "should_stop": trainer.should_stop,
            "lr": [g["lr"] for opt in trainer.optimizers for g in opt.param_groups],
            "kd_weight": getattr(pl_module, "kd_weight", None),
        }
        for cb in trainer.callbacks:
            if cb is not self and cb.state_dict():
                items[f"callback {type(cb).__name__}"] = cb.state_dict()
        if self.weights:
            items["weights"] = _weights_digest(pl_module)
        return {k: repr(v) for k, v in items.items()}

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule, where: str) -> None:
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return
        mine = self.fingerprint(trainer, pl_module)
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, mine)
        differing = sorted(k for k in mine if len({g.get(k) for g in gathered}) > 1)
        if differing:
            detail = "; ".join(f"{k}: " + ", ".join(f"rank {r}={g.get(k)}" for r, g in
                                                    enumerate(gathered)) for k in differing)
            raise RuntimeError(f"ranks disagree at step {trainer.global_step} ({where}): {detail}")
        self.checks += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer, pl_module, "validation end")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, pl_module, "fit end")
        if trainer.is_global_zero and trainer.world_size > 1:
            print(f"rank consistency: {self.checks} checks passed on {trainer.world_size} ranks",
                  flush=True)
