"""One LightningModule for every token architecture: next-token CE + named regularizers.

It receives the architecture's registry name and a plain dict of its config values (never a
built network), so ``LanguageModel.load_from_checkpoint(path)`` works without Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import SumMetric
from torchmetrics.text import Perplexity

from lit_models.archs import TeacherSignal, build_arch, make_config
from lit_models.compilation import compile_network, compile_setting
from lit_models.recipe import TrainingRecipe

IGNORE_INDEX = -100


class LanguageModel(TrainingRecipe):
    """Causal LM recipe. Loss = CE + sum_k loss_weights[k] * term_k (terms from the arch).

    Args:
        arch: registry name of the architecture (``lit_models.archs``).
        arch_config: plain dict of the architecture's config values.
        optimizer: AdamW settings ``lr``, ``weight_decay``, ``betas``, ``eps``.
        scheduler: ``warmup_steps`` and ``min_lr_ratio`` of the warmup + cosine schedule.
        loss_weights: lambda per regularizer term the architecture returns.
        compile: ``torch.compile`` the network for training and evaluation steps: false, true
            (inductor) or a backend name (``lit_models.compilation``); generation stays eager.
    """

    def __init__(
        self,
        arch: str,
        arch_config: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        compile: bool | str = False,
    ) -> None:
        super().__init__(arch, arch_config, optimizer, scheduler, loss_weights, compile=compile)
        self.net = build_arch(arch, self.hparams.arch_config)
        self._compile_backend = compile_setting(compile)
        self._compiled: list = []  # the compiled wrapper, outside the module tree (lazy)
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
            self.flops_per_token = make_config(self.hparams.arch, self.hparams.arch_config
                                               ).training_flops_per_token(
                dm.block_size, dm.batch_size * dm.block_size)

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

    def step_network(self):
        """The network the training and evaluation steps call: ``self.net``, or with
        ``compile`` its compiled wrapper (built at the first step, after any sharding)."""
        if self._compile_backend is None:
            return self.net
        if not self._compiled:
            self._compiled.append(compile_network(self.net, self._compile_backend))
        return self._compiled[0]

    def _loss(self, batch: Mapping[str, torch.Tensor], teacher: TeacherSignal | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        logits, aux = self.step_network()(batch["input_ids"], teacher=teacher)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX
        )
        return logits, ce, aux

    def teacher_signal(self, batch: Mapping[str, torch.Tensor]) -> TeacherSignal | None:
        """A teacher's view of ``batch``, passed to the architecture in training (none here;
        the distillation recipe's teacher)."""
        return None

    def weighted_terms(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor,
                       aux: Mapping[str, torch.Tensor], teacher: TeacherSignal | None
                       ) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, term)}`` added to the CE: the architecture's terms with
        ``model.loss_weights`` (the distillation recipe weights its teacher terms itself)."""
        return self.weighted_aux(aux)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        teacher = self.teacher_signal(batch)
        logits, ce, aux = self._loss(batch, teacher)
        total = self.total_loss(ce, self.weighted_terms(batch, logits, aux, teacher))
        mask = batch.get("attention_mask")
        n_tokens = mask.sum() if mask is not None else torch.tensor(batch["input_ids"].numel())
        if self.trainer.world_size > 1:  # every rank counts the same global total (token budget)
            n_tokens = self.trainer.strategy.reduce(n_tokens.double(), reduce_op="sum")
        self.tokens_seen += int(n_tokens)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True)
        if self.flops_per_token:
            self.log("train/flops", self.training_flops, on_step=True)
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
