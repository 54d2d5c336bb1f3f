"""One LightningModule for every token architecture: next-token CE + named regularizers.

It receives the architecture's registry name and a plain dict of its config values (never a
built network), so ``LanguageModel.load_from_checkpoint(path)`` works without Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import SumMetric
from torchmetrics.text import Perplexity

from lit_models.archs import TeacherSignal, build_arch
from lit_models.recipe import TrainingRecipe

IGNORE_INDEX = -100


def _plain(value: Any) -> Any:
    """Hydra hands over DictConfigs; checkpoints must hold plain Python containers."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


class LanguageModel(TrainingRecipe, L.LightningModule):
    """Causal LM recipe. Loss = CE + sum_k loss_weights[k] * term_k (terms from the arch).

    Args:
        arch: registry name of the architecture (``lit_models.archs``).
        arch_config: plain dict of the architecture's config values.
        optimizer: AdamW settings ``lr``, ``weight_decay``, ``betas``, ``eps``.
        scheduler: ``warmup_steps`` and ``min_lr_ratio`` of the warmup + cosine schedule.
        loss_weights: lambda per regularizer term the architecture returns.
    """

    def __init__(
        self,
        arch: str,
        arch_config: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        arch_config, optimizer, scheduler, loss_weights = map(
            _plain, (arch_config, optimizer, scheduler, loss_weights)
        )
        self.save_hyperparameters(
            {"arch": arch, "arch_config": dict(arch_config), "optimizer": dict(optimizer or {}),
             "scheduler": dict(scheduler or {}), "loss_weights": dict(loss_weights or {})}
        )
        for key, weight in self.hparams.loss_weights.items():
            if not isinstance(weight, int | float) or weight < 0 or not math.isfinite(weight):
                raise ValueError(f"model.loss_weights.{key} must be a finite number >= 0, got {weight!r}")
        self.net = build_arch(arch, self.hparams.arch_config)
        self.tokens_seen = 0
        self.flops_per_batch: int | None = None  # read by Lightning's ThroughputMonitor
        self._rng_to_restore: dict | None = None
        self.eval_sets: list[str] = []
        self.eval_stats: dict = {}
        # characters per token id (from the datamodule's tokenizer), for bits per character
        self.register_buffer("token_chars", None, persistent=False)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        names = list(getattr(dm, "eval_set_names", None) or [""])
        self.eval_sets = names
        # per stage and set: {"words": W, "targets": T} of the whole set, for word-level ppl
        self.eval_stats = getattr(dm, "eval_set_stats", None) or {}
        tokenizer = getattr(dm, "tokenizer", None)
        if tokenizer is not None:
            vocab = self.hparams.arch_config.get("vocab_size")
            if vocab is not None and vocab < tokenizer.vocab_size:
                raise ValueError(
                    f"model vocab_size={vocab} is smaller than the tokenizer's "
                    f"{tokenizer.vocab_size} ({tokenizer!r})"
                )
            chars = torch.tensor(tokenizer.token_char_counts(), dtype=torch.float64)
            chars = F.pad(chars, (0, (vocab or len(chars)) - len(chars)))
            self.token_chars = chars
        for stage_name in ("val", "test"):
            for name in names:
                key = f"{stage_name}_{name}"
                setattr(self, f"_ppl_{key}", Perplexity(ignore_index=IGNORE_INDEX))
                for metric in ("nll", "tok", "chr"):
                    # "disable": a NaN/inf propagates to the logged metric (the default drops it,
                    # so a diverged model reported val/loss 0.0); DivergenceGuard then stops the run
                    setattr(self, f"_{metric}_{key}",
                            SumMetric(nan_strategy="disable").set_dtype(torch.float64))
        if stage == "fit" and dm is not None and hasattr(dm, "batch_size") and hasattr(dm, "block_size"):
            self.flops_per_batch = self._measure_flops(dm.batch_size, dm.block_size)

    def _measure_flops(self, batch_size: int, block_size: int) -> int:
        """Training FLOPs of one batch, counted once on the meta device (no compute)."""
        from lightning.fabric.utilities.throughput import measure_flops

        with torch.device("meta"):
            net = build_arch(self.hparams.arch, self.hparams.arch_config)
            x = torch.randint(0, 2, (batch_size, block_size))
        return measure_flops(net, lambda: net(x)[0], lambda y: y.sum())

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.net(input_ids)

    def _loss(self, batch: Mapping[str, torch.Tensor], teacher: TeacherSignal | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        logits, aux = self.net(batch["input_ids"], teacher=teacher)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX
        )
        return logits, ce, aux

    def _check_terms(self, aux: Mapping[str, torch.Tensor]) -> None:
        weights = self.hparams.loss_weights
        missing, unused = sorted(set(aux) - set(weights)), sorted(set(weights) - set(aux))
        if missing or unused:
            raise ValueError(
                f"architecture {self.hparams.arch!r} returns loss terms {sorted(aux)} but "
                f"model.loss_weights has {sorted(weights)}: "
                + (f"add a weight for {missing}" if missing else f"remove {unused}")
            )

    def teacher_signal(self, batch: Mapping[str, torch.Tensor]) -> TeacherSignal | None:
        """A teacher's view of ``batch``, passed to the architecture in training (none here;
        the distillation recipe's teacher)."""
        return None

    def weighted_terms(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor,
                       aux: Mapping[str, torch.Tensor], teacher: TeacherSignal | None
                       ) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, term)}`` added to the CE: the architecture's terms with
        ``model.loss_weights`` (the distillation recipe weights its teacher terms itself)."""
        self._check_terms(aux)
        return {k: (self.hparams.loss_weights[k], term) for k, term in aux.items()}

    def _check_finite(self, terms: Mapping[str, tuple[float, torch.Tensor]]) -> None:
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
            "already written are kept (resume from last.ckpt, e.g. with a lower lambda or lr)"
        )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        teacher = self.teacher_signal(batch)
        logits, ce, aux = self._loss(batch, teacher)
        weighted = self.weighted_terms(batch, logits, aux, teacher)
        self._check_finite(weighted)
        total = ce
        for key, (weight, term) in weighted.items():
            total = total + weight * term
            self.log(f"train/loss_{key}", term, on_step=True)
        mask = batch.get("attention_mask")
        n_tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.tokens_seen += n_tokens * self.trainer.world_size
        self.log("train/loss", total, on_step=True, prog_bar=True)
        self.log("train/loss_ce", ce, on_step=True)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True)
        return total

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor], dataloader_idx: int) -> None:
        logits, _, _ = self._loss(batch)
        labels = batch["labels"]
        key = f"{stage}_{self.eval_sets[dataloader_idx]}"
        valid = labels != IGNORE_INDEX
        nll = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        getattr(self, f"_ppl_{key}").update(logits.float(), labels)
        getattr(self, f"_nll_{key}").update(nll.double())
        getattr(self, f"_tok_{key}").update(valid.sum().double())
        if self.token_chars is not None:
            chars = self.token_chars[labels.clamp(min=0)][valid].sum()
            getattr(self, f"_chr_{key}").update(chars)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        """Per-set loss/ppl/bpc; ``<stage>/loss`` is the mean over sets (what checkpoints monitor)."""
        losses = []
        for name in self.eval_sets:
            key = f"{stage}_{name}"
            prefix = f"{stage}/{name}_" if name else f"{stage}/"
            tokens = getattr(self, f"_tok_{key}").compute()
            if tokens == 0:
                continue
            loss = getattr(self, f"_nll_{key}").compute() / tokens
            losses.append(loss)
            metrics = {f"{prefix}ppl": getattr(self, f"_ppl_{key}").compute()}
            if name:
                metrics[f"{prefix}loss"] = loss
            nll = getattr(self, f"_nll_{key}").compute()
            if self.token_chars is not None:
                metrics[f"{prefix}bpc"] = nll / math.log(2) / getattr(self, f"_chr_{key}").compute()
            stats = self.eval_stats.get(stage, {}).get(name)
            if stats:
                # Words of the evaluated part: exact on a full pass, pro rata under limit_*_batches.
                words = stats["words"] * tokens / stats["targets"]
                metrics[f"{prefix}word_ppl"] = torch.exp(nll / words)
            self.log_dict({k: v.float() for k, v in metrics.items()}, sync_dist=False)
            for metric in ("ppl", "nll", "tok", "chr"):
                getattr(self, f"_{metric}_{key}").reset()
        if losses:
            self.log(f"{stage}/loss", torch.stack(losses).mean().float(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
