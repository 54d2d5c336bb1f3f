"""LightningModule for coordinate decoding: position x -> character, by deliberate memorization.

Batches are ``{coords, targets, book_id}`` (``datamodules/book_coords.py``). Loss: cross-entropy
(nats, like the language model) + the architecture's named terms. Validation sweeps every
position of every book in order, so it *is* the exact-reconstruction check:

- ``val/loss`` full-book cross-entropy (nats/char, mean over all characters; checkpoints
  monitor it), ``val/bpc`` the same in bits per character;
- ``val/char_acc`` argmax accuracy over the characters evaluated in this pass;
- ``val/recon_acc`` and ``val/recon_wrong`` (number of wrong characters): only logged when the
  pass covered every character of every book (not under ``limit_val_batches``), per book too
  (``val/book<i>_recon_wrong``, ``val/book<i>_bpc``) when there are several.

The generalization rule of language models (select on valid, report test once) does not
apply: the figure of merit is reconstruction of the training text itself; ``test/`` repeats
the sweep with the selected checkpoint.

At the end of fitting it draws the hidden-state pictures (``lit_models/fractal_pictures.py``),
saves them under ``<output_dir>/pictures/`` and logs them to W&B as images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torchmetrics import Metric

from lit_models.archs.registry import COORDINATE_ARCHITECTURES, build_arch
from lit_models.recipe import TrainingRecipe

log = logging.getLogger(__name__)


def build_coordinate_arch(arch: str, arch_config: Mapping[str, Any]) -> torch.nn.Module:
    # Importing the module registers the architecture in COORDINATE_ARCHITECTURES.
    import lit_models.archs.fractal  # noqa: F401

    return build_arch(arch, arch_config, table=COORDINATE_ARCHITECTURES)


class BookReconstruction(Metric):
    """Per-book sums of NLL (nats), correct argmax predictions and characters evaluated."""

    full_state_update = False

    def __init__(self, num_books: int) -> None:
        super().__init__()
        for name in ("nll", "correct", "count"):
            self.add_state(name, torch.zeros(num_books, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, book_id: torch.Tensor) -> None:
        keep = targets >= 0  # evaluation padding on several ranks has target -100
        logits, targets, book_id = logits[keep], targets[keep], book_id[keep]
        nll = F.cross_entropy(logits.float(), targets, reduction="none").double()
        correct = (logits.argmax(-1) == targets).double()
        self.nll.index_add_(0, book_id, nll)
        self.correct.index_add_(0, book_id, correct)
        self.count.index_add_(0, book_id, torch.ones_like(nll))

    def compute(self) -> torch.Tensor:
        """(3, num_books): rows nll, correct, count (a tensor: torchmetrics squeezes scalars)."""
        return torch.stack([self.nll, self.correct, self.count])


class CoordinateDecoder(TrainingRecipe):
    """Position -> character recipe. Loss = CE + sum_k loss_weights[k] * term_k.

    Args:
        arch: name in ``COORDINATE_ARCHITECTURES`` (``fractal``).
        arch_config: plain dict of the architecture's config values (``vocab_size`` is filled
            from the datamodule; ``num_books`` must be >= the datamodule's number of books).
        optimizer: AdamW settings ``lr``, ``weight_decay``, ``betas``, ``eps``.
        scheduler: ``warmup_steps`` and ``min_lr_ratio`` of the warmup + cosine schedule.
        loss_weights: lambda per regularizer term the architecture returns.
        pictures: draw the hidden-state pictures at the end of fitting.
        picture_passage: characters in the trajectory picture (from the middle of book 0).
    """

    OPTIMIZER_DEFAULTS = {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.9, 0.99), "eps": 1e-8}

    def __init__(
        self,
        arch: str,
        arch_config: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        pictures: bool = True,
        picture_passage: int = 200,
    ) -> None:
        super().__init__(arch, arch_config, optimizer, scheduler, loss_weights,
                         pictures=bool(pictures), picture_passage=int(picture_passage))
        self.net = build_coordinate_arch(arch, self.hparams.arch_config)
        # tokens_seen counts characters here (TokenBudget reads it as a character budget)
        self.charset: list[str] | None = None  # the vocabulary, saved with every checkpoint
        self.book_titles: list[str] = []
        self.book_lengths: list[int] = []
        n = self.net.config.num_books
        self.val_recon = BookReconstruction(n)
        self.test_recon = BookReconstruction(n)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "charset"):
            raise ValueError("CoordinateDecoder needs a coordinate datamodule (data=book_coords) "
                             f"with charset/num_books, got {type(dm).__name__}")
        c = self.net.config
        if c.vocab_size != dm.vocab_size:
            raise ValueError(f"model.arch_config.vocab_size={c.vocab_size} but the books' vocabulary "
                             f"has {dm.vocab_size} ids; leave vocab_size null to take it from the data")
        if self.charset is not None and self.charset != dm.charset:
            raise ValueError("the checkpoint's character vocabulary differs from the datamodule's; "
                             "pass the checkpoint's charset as data.charset")
        if dm.num_books > c.num_books:
            raise ValueError(f"data has {dm.num_books} books but model.arch_config.num_books="
                             f"{c.num_books}: set model.arch_config.num_books={dm.num_books}")
        self.charset = dm.charset
        self.book_titles, self.book_lengths = list(dm.titles), list(dm.book_lengths)
        longest = max(self.book_lengths)
        top = float(self.net.freqs.max()) / max(longest - 1, 1)  # phase step between neighbours
        if longest > 1 and top < 0.5:
            log.warning(f"highest frequency advances only {top:.3g} rad between neighbouring "
                        f"characters of a {longest}-character book: neighbours are hard to tell "
                        "apart (more octaves / a higher base_frequency would help)")
        if stage == "fit":
            self.flops_per_batch = self._measure_flops(dm.batch_size)

    def _measure_flops(self, batch_size: int) -> int:
        """Training FLOPs of one batch, counted once on the meta device (no compute)."""
        from lightning.fabric.utilities.throughput import measure_flops

        with torch.device("meta"):
            net = build_coordinate_arch(self.hparams.arch, self.hparams.arch_config)
            x = torch.zeros(batch_size, dtype=torch.float64)
            b = torch.zeros(batch_size, dtype=torch.long)
        return measure_flops(net, lambda: net(x, b)[0], lambda y: y.sum())

    # ---------------------------------------------------------------- forward
    def forward(self, coords: torch.Tensor, book_id: torch.Tensor | None = None,
                depth: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.net(coords, book_id, depth=depth)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        depth = self.net.active_depth(self.global_step)
        logits, aux = self.net(batch["coords"], batch["book_id"], depth=depth)
        ce = F.cross_entropy(logits.float(), batch["targets"])
        total = self.total_loss(ce, self.weighted_aux(aux))
        self.tokens_seen += batch["targets"].numel() * self.trainer.world_size
        acc = (logits.argmax(-1) == batch["targets"]).float().mean()
        self.log("train/char_acc", acc, on_step=True)
        self.log("train/depth", float(depth), on_step=True)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True)
        return total

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        logits, _ = self.net(batch["coords"], batch["book_id"])
        self.val_recon.update(logits, batch["targets"], batch["book_id"])

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        logits, _ = self.net(batch["coords"], batch["book_id"])
        self.test_recon.update(logits, batch["targets"], batch["book_id"])

    def _eval_epoch_end(self, stage: str, metric: BookReconstruction) -> None:
        nll, correct, counts = metric.compute()
        metric.reset()
        count = counts.sum()
        if count == 0:
            return
        loss = nll.sum() / count
        metrics = {f"{stage}/loss": loss, f"{stage}/bpc": loss / math.log(2),
                   f"{stage}/char_acc": correct.sum() / count}
        lengths = torch.zeros_like(counts)
        lengths[: len(self.book_lengths)] = torch.tensor(self.book_lengths, dtype=counts.dtype)
        if self.book_lengths and torch.equal(counts, lengths):  # the whole of every book
            metrics[f"{stage}/recon_acc"] = correct.sum() / count
            metrics[f"{stage}/recon_wrong"] = count - correct.sum()
            if len(self.book_lengths) > 1:
                for i in range(len(self.book_lengths)):
                    metrics[f"{stage}/book{i}_recon_wrong"] = counts[i] - correct[i]
                    metrics[f"{stage}/book{i}_bpc"] = nll[i] / counts[i] / math.log(2)
        self.log(f"{stage}/loss", metrics.pop(f"{stage}/loss").float(), prog_bar=True)
        self.log_dict({k: v.float() for k, v in metrics.items()})

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_recon)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_recon)

    # -------------------------------------------------------------- pictures
    def on_fit_end(self) -> None:
        if not self.hparams.pictures or self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return
        from lit_models.fractal_pictures import draw_pictures

        dm = self.trainer.datamodule
        out_dir = Path(self.trainer.default_root_dir) / "pictures"
        paths = draw_pictures(self.net, dm.ids[0], out_dir, book_index=0,
                              passage=self.hparams.picture_passage, title=dm.titles[0],
                              charset=dm.charset)
        log.info(f"Hidden-state pictures: {', '.join(str(p) for p in paths.values())}")
        for lg in self.trainer.loggers:
            if isinstance(lg, WandbLogger):
                for name, path in paths.items():
                    lg.log_image(key=f"pictures/{name}", images=[str(path)], step=self.global_step)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["charset"] = list(self.charset) if self.charset is not None else None
        checkpoint["books"] = {"titles": self.book_titles, "lengths": self.book_lengths}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.charset = checkpoint.get("charset")
        books = checkpoint.get("books") or {}
        self.book_titles = list(books.get("titles") or [])
        self.book_lengths = list(books.get("lengths") or [])

