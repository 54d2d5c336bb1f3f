"""What every platform LightningModule shares, as one base class.

``TrainingRecipe.__init__`` saves the hyper-parameters as plain values (so checkpoints load with
``load_from_checkpoint`` and without Hydra), checks the regularizer weights, and sets the resume
state; ``total_loss`` checks every weighted term is finite and sums ``ce + sum_k w_k * term_k``,
logging ``train/loss_<k>``, ``train/loss_ce`` and ``train/loss``. AdamW + warmup-cosine come from
the hparams (``OPTIMIZER_DEFAULTS`` fills keys the config leaves out), and exact resume carries
tokens seen and RNG states in the checkpoint. A recipe sets ``self.net`` after ``super().__init__``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch

from lhp.config_check import to_plain
from lhp.errors import UserError
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


class TrainingRecipe(L.LightningModule):
    """Base LightningModule: hparams, loss assembly, optimizer/scheduler and exact resume.

    Args:
        arch: registry name of the architecture.
        arch_config: plain dict of the architecture's config values.
        optimizer: AdamW settings ``lr``, ``weight_decay``, ``betas``, ``eps``.
        scheduler: ``warmup_steps`` and ``min_lr_ratio`` of the warmup + cosine schedule.
        loss_weights: lambda per regularizer term the architecture returns.
        **extra: recipe-specific hyper-parameters, saved with the others.
    """

    OPTIMIZER_DEFAULTS: ClassVar[dict[str, Any]] = {
        "lr": 3e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
    SCHEDULER_DEFAULTS: ClassVar[dict[str, Any]] = {"warmup_steps": 100, "min_lr_ratio": 0.1}

    def __init__(self, arch: str, arch_config: Mapping[str, Any],
                 optimizer: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None,
                 loss_weights: Mapping[str, float] | None = None, **extra: Any) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"arch": arch, "arch_config": dict(to_plain(arch_config)),
             "optimizer": dict(to_plain(optimizer) or {}), "scheduler": dict(to_plain(scheduler) or {}),
             "loss_weights": dict(to_plain(loss_weights) or {}),
             **{k: to_plain(v) for k, v in extra.items()}},
            logger=False)  # the run's config reaches the loggers once, nested (log_hyperparameters)
        for key, weight in self.hparams.loss_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0 \
                    or not math.isfinite(weight):
                raise UserError(f"model.loss_weights.{key} must be a finite number >= 0, got {weight!r}")
        self.tokens_seen = 0
        self.flops_per_batch: int | None = None  # read by Lightning's ThroughputMonitor
        self.flops_per_token: float | None = None  # analytic training FLOPs (token architectures)
        self._rng_to_restore: dict | None = None

    # ------------------------------------------------------------------ loss
    def check_terms(self, aux: Mapping[str, torch.Tensor]) -> None:
        """The architecture's loss terms and ``model.loss_weights`` name the same keys."""
        weights = self.hparams.loss_weights
        missing, unused = sorted(set(aux) - set(weights)), sorted(set(weights) - set(aux))
        if missing or unused:
            raise UserError(
                f"architecture {self.hparams.arch!r} returns loss terms {sorted(aux)} but "
                f"model.loss_weights has {sorted(weights)}: "
                + (f"add a weight for {missing}" if missing else f"remove {unused}"))

    def weighted_aux(self, aux: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (model.loss_weights[name], term)}`` for the architecture's terms."""
        self.check_terms(aux)
        return {k: (self.hparams.loss_weights[k], term) for k, term in aux.items()}

    def check_finite(self, terms: Mapping[str, tuple[float, torch.Tensor]]) -> None:
        """Stop on a NaN/inf regularizer term before it reaches the weights (one device sync).

        Raising here leaves every checkpoint already written (last.ckpt included) untouched.
        """
        if not terms or bool(torch.isfinite(torch.cat(
                [term.detach().float().reshape(-1) for _, term in terms.values()])).all()):
            return
        bad = [k for k, (_, term) in terms.items() if not bool(torch.isfinite(term).all())]
        raise FloatingPointError(
            f"loss term(s) {bad} of architecture {self.hparams.arch!r} are not finite at step "
            f"{self.global_step}: training stopped before the optimizer step; checkpoints "
            "already written are kept (resume from last.ckpt, e.g. with a lower lambda or lr)")

    def total_loss(self, ce: torch.Tensor, terms: Mapping[str, tuple[float, torch.Tensor]]
                   ) -> torch.Tensor:
        """``ce + sum_k w_k * term_k``, each term logged as ``train/loss_<k>``."""
        self.check_finite(terms)
        total = ce
        for key, (weight, term) in terms.items():
            total = total + weight * term
            self.log(f"train/loss_{key}", term, on_step=True)
        self.log("train/loss", total, on_step=True, prog_bar=True)
        self.log("train/loss_ce", ce, on_step=True)
        return total

    def configure_model(self) -> None:
        """Under ``trainer=fsdp`` (a device mesh is set), shard ``self.net`` block by block.

        Lightning calls this on every strategy; without a mesh it does nothing.
        """
        mesh = self.device_mesh
        if mesh is not None:
            from lit_models.strategies import shard_network

            shard_network(self.net, self.hparams.arch, mesh["data_parallel"])

    def configure_optimizers(self) -> dict:
        opt_cfg = {**self.OPTIMIZER_DEFAULTS, **self.hparams.optimizer}
        sched_cfg = {**self.SCHEDULER_DEFAULTS, **self.hparams.scheduler}
        optimizer = build_optimizer(self.net, **opt_cfg)
        total = self.trainer.estimated_stepping_batches
        for callback in self.trainer.callbacks:  # a budget that ends the schedule (TokenBudget)
            steps = getattr(callback, "schedule_steps", None)
            steps = steps(self) if callable(steps) else None
            if steps is not None:
                total = min(total, steps)
        total = int(total)
        warmup = min(int(sched_cfg["warmup_steps"]), max(total - 1, 0))
        schedule = partial(warmup_cosine, warmup_steps=warmup, total_steps=total,
                           min_lr_ratio=float(sched_cfg["min_lr_ratio"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    @property
    def training_flops(self) -> float:
        """Training FLOPs so far: ``tokens_seen x flops_per_token`` (0 when not counted)."""
        return float(self.tokens_seen * (self.flops_per_token or 0.0))

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
