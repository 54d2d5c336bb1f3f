"""Topology of hidden states during training, logged under ``topo/``.

Every ``every_n_steps`` optimizer steps and at the end of each validation, the callback runs a
fixed probe batch through the model in eval mode (no gradients), reads the output of the chosen
layers with forward hooks (``lit_models.hidden_states``: no change to the architecture), takes
the same ``max_points`` token vectors each time (a seeded subsample of the probe's real tokens),
computes their H0 and H1 persistence with the topology engine and logs, per layer,

* ``topo/<layer>/betti0``, ``betti1``: Betti numbers at ``scale`` (``"auto"``: ``scale_factor``
  x the median H0 death, i.e. the median nearest-merge distance of that cloud, so the scale
  follows the layer's norm as training changes it; logged as ``topo/<layer>/scale``);
* ``entropy``, ``total_persistence``: persistence entropy (nats) and total persistence of H0;
  ``entropy_h1``, ``total_persistence_h1``: the same for H1;
* one image ``topo/diagrams`` (a persistence diagram per layer) through ``WandbLogger.log_image``;
* opt-in integration metrics (``integration``: any of ``INTEGRATION_METRICS``, functions of
  ``lit_models.topology.intrinsic`` / ``integration``), on the same probe, same cadence:
  ``id_twonn``, ``id_mle`` (intrinsic dimension, TwoNN and Levina-Bickel, on *all* the probe's
  real token vectors: neighbour distances are cheap and small samples bias them), ``lz``
  (normalised LZ76 complexity of the probe's token sequence as ``n_symbols`` k-means codes),
  ``te_from_prev`` / ``te_to_prev`` (bias-corrected transfer entropy in bits from / to the
  previous layer of ``layers``, on those codes; not for the first layer), ``recon_h0`` /
  ``recon_h1`` (bottleneck distance between the layer's diagram and that of its PCA projection
  to ``recon_dim`` dimensions, on the ``max_points`` subsample, same engine method).

``<layer>`` is the module name inside the LightningModule (``net.blocks.5``). The probe is the
first batch of the datamodule's validation loader (a fresh loader: the training loaders'
state is not touched) or, without one, the first training batch; it is saved in the callback's
``state_dict`` so a resumed run probes the same tokens. The probe forward does not draw from
any RNG and restores each module's train/eval mode, so training is unchanged by the callback.
Runs on global rank zero only; skipped during the sanity check.

Opt-in (not in ``callbacks/default.yaml``): ``callbacks=with_topology`` or
``'callbacks=[default,topology_metrics]'``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from lhp.errors import UserError
from lit_models.hidden_states import block_names, capture, resolve_layers
from lit_models.topology import (
    METHODS,
    Diagram,
    betti_numbers,
    compute_persistence,
    persistence_entropy,
    total_persistence,
)
from lit_models.topology.integration import (
    MAX_SYMBOLS,
    lz_complexity,
    reconstruction_error,
    symbolize,
    transfer_entropy,
)
from lit_models.topology.intrinsic import MLE_K, TWONN_MIN_POINTS, mle_dimension, twonn_dimension

PROBE_SOURCES = ("val", "train")
INTEGRATION_METRICS = ("twonn", "mle", "lz", "te", "recon")


class TopologyMetrics(Callback):
    """Persistence statistics of chosen layers' hidden states on a fixed probe batch.

    Args:
        every_n_steps: compute every this many optimizer steps (also at each validation end).
        layers: block indices (negative from the end) or module names / ``fnmatch`` patterns
            of the LightningModule; None: 2 layers, the middle block and the last block.
        max_points: token vectors per layer (a fixed seeded subsample of the probe's tokens).
        max_dim: 1 for H0 and H1, 0 for H0 only.
        method: the engine's method (``lit_models.topology.METHODS``; "auto" picks by size).
        scale: Betti-number scale, a positive number or "auto" (see the module docstring).
        scale_factor: multiplier of the median H0 death for ``scale="auto"``.
        probe_source: "val" (first validation batch, else first training batch) or "train".
        probe_batch_size: use only the first rows of the probe batch (None: all of them).
        log_images: log the persistence-diagram image to W&B loggers.
        seed: seed of the token subsample (and of the k-means symbols and TE surrogates).
        integration: integration metrics to add (``INTEGRATION_METRICS``; None: none, the
            callback's cost is then unchanged).
        n_symbols: k of the k-means symbols for ``lz`` and ``te``.
        recon_dim: PCA dimension of ``recon``.
        te_surrogates: shuffled surrogates whose mean TE is subtracted (bias correction).
    """

    def __init__(self, every_n_steps: int = 50, layers: Sequence[int | str] | None = None,
                 max_points: int = 256, max_dim: int = 1, method: str = "auto",
                 scale: float | str = "auto", scale_factor: float = 2.0,
                 probe_source: str = "val", probe_batch_size: int | None = None,
                 log_images: bool = True, seed: int = 0,
                 integration: Sequence[str] | None = None, n_symbols: int = 8,
                 recon_dim: int = 2, te_surrogates: int = 20) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TopologyMetrics.{name} must be an int >= {minimum}, "
                                 f"got {value!r}")

        positive_int("every_n_steps", every_n_steps)
        positive_int("max_points", max_points, 3)
        if probe_batch_size is not None:
            positive_int("probe_batch_size", probe_batch_size)
        if max_dim not in (0, 1):
            raise ValueError(f"TopologyMetrics.max_dim must be 0 (H0) or 1 (H0 and H1), "
                             f"got {max_dim!r}")
        if method not in METHODS:
            raise ValueError(f"TopologyMetrics.method must be one of {METHODS}, got {method!r}")
        if scale != "auto" and (isinstance(scale, bool) or not isinstance(scale, int | float)
                                or not 0 < scale < math.inf):
            raise ValueError(f"TopologyMetrics.scale must be a positive number or 'auto', "
                             f"got {scale!r}")
        if not (isinstance(scale_factor, int | float) and 0 < scale_factor < math.inf):
            raise ValueError(f"TopologyMetrics.scale_factor must be > 0, got {scale_factor!r}")
        if probe_source not in PROBE_SOURCES:
            raise ValueError(f"TopologyMetrics.probe_source must be one of {PROBE_SOURCES}, "
                             f"got {probe_source!r}")
        if layers is not None and (isinstance(layers, str | int) or len(layers) == 0):
            raise ValueError(f"TopologyMetrics.layers must be a non-empty list of block indices "
                             f"or module names, or null, got {layers!r}")
        bad = [m for m in (integration or ()) if m not in INTEGRATION_METRICS]
        if isinstance(integration, str) or bad:
            raise UserError(f"TopologyMetrics.integration must be a list of {INTEGRATION_METRICS} "
                            f"(or null), got {integration!r}")
        positive_int("n_symbols", n_symbols, 2)
        if n_symbols > MAX_SYMBOLS:
            raise UserError(f"TopologyMetrics.n_symbols must be <= {MAX_SYMBOLS}, got {n_symbols}")
        positive_int("recon_dim", recon_dim)
        positive_int("te_surrogates", te_surrogates, 0)
        self.integration = list(dict.fromkeys(integration or ()))
        self.n_symbols, self.recon_dim, self.te_surrogates = n_symbols, recon_dim, te_surrogates
        self.every_n_steps, self.max_points, self.max_dim = every_n_steps, max_points, max_dim
        self.layers = list(layers) if layers is not None else None
        self.method, self.scale, self.scale_factor = method, scale, float(scale_factor)
        self.probe_source, self.probe_batch_size = probe_source, probe_batch_size
        self.log_images, self.seed = log_images, seed
        self.layer_names: list[str] = []
        self.probe: dict[str, torch.Tensor] | None = None  # input_ids, token index (flat)
        self.last_step = -1  # global step of the last computation
        self.last_metrics: dict[str, float] = {}
        self.compute_seconds = 0.0  # total time spent computing (for overhead reports)
        self.integration_seconds = 0.0  # the integration metrics' share of compute_seconds
        self.computations = 0

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.layers is None:
            blocks = block_names(pl_module)
            if not blocks:
                raise ValueError(f"TopologyMetrics: {type(pl_module).__name__} has no repeated "
                                 "blocks (ModuleList) to pick default layers from; set layers")
            self.layer_names = list(dict.fromkeys([blocks[(len(blocks) - 1) // 2], blocks[-1]]))
        else:
            try:
                self.layer_names = resolve_layers(pl_module, self.layers)
            except ValueError as err:
                raise ValueError(f"TopologyMetrics.layers: {err}") from err
        if "te" in self.integration and len(self.layer_names) < 2:
            raise UserError(f"TopologyMetrics: integration 'te' needs at least 2 layers "
                            f"(consecutive pairs), layers resolve to {self.layer_names}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.probe is None and trainer.is_global_zero and self.probe_source == "val":
            self._probe_from_datamodule(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.probe is None and trainer.is_global_zero:
            self._set_probe(batch)  # probe_source="train", or no validation loader

    def _probe_from_datamodule(self, trainer: L.Trainer) -> None:
        dm = getattr(trainer, "datamodule", None)
        if dm is None:
            return
        try:
            loader = dm.val_dataloader()
        except (NotImplementedError, AttributeError):  # LightningDataModule without val data
            return
        if isinstance(loader, Sequence):
            loader = loader[0] if loader else None
        if loader is not None:
            self._set_probe(next(iter(loader)))

    def _set_probe(self, batch: Any) -> None:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError("TopologyMetrics needs token batches (dicts with 'input_ids'); got "
                             f"{type(batch).__name__}")
        ids = batch["input_ids"][: self.probe_batch_size].detach().cpu().clone()
        mask = batch.get("attention_mask")
        valid = (mask[: self.probe_batch_size].cpu().bool() if mask is not None
                 else torch.ones_like(ids, dtype=torch.bool)).flatten().nonzero().flatten()
        needed = max([TWONN_MIN_POINTS if "twonn" in self.integration else 0,
                      MLE_K[1] + 1 if "mle" in self.integration else 0])
        if len(valid) < needed:
            raise UserError(f"TopologyMetrics: the probe batch has {len(valid)} real tokens; "
                            f"integration {self.integration} needs >= {needed}: raise "
                            "callbacks.topology_metrics.probe_batch_size or the batch size")
        gen = torch.Generator().manual_seed(self.seed)
        index = valid
        if len(valid) > self.max_points:
            index = valid[torch.randperm(len(valid), generator=gen)[: self.max_points]].sort()[0]
        self.probe = {"input_ids": ids, "index": index, "valid": valid}

    # ------------------------------------------------------------------ triggers
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._run(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self.last_step or not trainer.is_global_zero:
            return  # already done at this step (gradient accumulation, validation at a trigger)
        if self.probe is None:
            self._probe_from_datamodule(trainer)
            if self.probe is None:
                return
        start = time.perf_counter()
        states = self.probe_states(pl_module)
        diagrams = self.diagrams_of(self._select(states, "index"))
        metrics = {}
        for name, diagram in diagrams.items():
            metrics.update({f"topo/{name}/{k}": v for k, v in self.statistics(diagram).items()})
        if self.integration:
            t0 = time.perf_counter()
            for name, stats in self.integration_metrics(states, diagrams).items():
                metrics.update({f"topo/{name}/{k}": v for k, v in stats.items()})
            self.integration_seconds += time.perf_counter() - t0
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        if self.log_images and any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            image = diagram_image(diagrams, title=f"step {step}")
            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger):
                    lg.log_image(key="topo/diagrams", images=[image], step=step)
        self.last_step, self.last_metrics = step, metrics
        self.compute_seconds += time.perf_counter() - start
        self.computations += 1

    # ------------------------------------------------------------------ computation
    @torch.no_grad()
    def probe_states(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """(B * T, D) float32 vectors of every probe position per layer (one probe forward)."""
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            with capture(pl_module, self.layer_names) as store:
                pl_module(self.probe["input_ids"].to(pl_module.device))
        finally:
            for module, training in modes.items():
                module.training = training
        return {name: store[name].reshape(-1, store[name].size(-1)).float().cpu()
                for name in self.layer_names}

    def _select(self, states: Mapping[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
        """The probe rows ``key`` names: "index" (the max_points subsample) or "valid" (every
        real token, in order; probes saved before it existed: every position)."""
        rows = self.probe.get(key)
        return {name: h if rows is None else h[rows] for name, h in states.items()}

    def hidden_states(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """(max_points, D) float32 token vectors per layer, from the probe batch."""
        return self._select(self.probe_states(pl_module), "index")

    def diagrams_of(self, points: Mapping[str, torch.Tensor]) -> dict[str, Diagram]:
        return {name: compute_persistence(p, max_dim=self.max_dim, method=self.method)
                for name, p in points.items()}

    def diagrams(self, pl_module: L.LightningModule) -> dict[str, Diagram]:
        return self.diagrams_of(self.hidden_states(pl_module))

    def integration_metrics(self, states: Mapping[str, torch.Tensor],
                            diagrams: Mapping[str, Diagram]) -> dict[str, dict[str, float]]:
        """The ``integration`` metrics per layer, from ``probe_states`` and the layers' diagrams
        (see the module docstring)."""
        sequences = self._select(states, "valid")
        points = self._select(states, "index")
        symbols = ({n: symbolize(h, self.n_symbols, self.seed) for n, h in sequences.items()}
                   if {"lz", "te"} & set(self.integration) else {})
        out: dict[str, dict[str, float]] = {}
        previous = None
        for name in self.layer_names:
            stats = out.setdefault(name, {})
            if "twonn" in self.integration:
                stats["id_twonn"] = twonn_dimension(sequences[name]).dimension
            if "mle" in self.integration:
                stats["id_mle"] = mle_dimension(sequences[name]).dimension
            if "lz" in self.integration:
                stats["lz"] = lz_complexity(symbols[name], alphabet_size=self.n_symbols)
            if "te" in self.integration and previous is not None:
                stats["te_from_prev"] = transfer_entropy(symbols[previous], symbols[name],
                                                         self.te_surrogates, self.seed)
                stats["te_to_prev"] = transfer_entropy(symbols[name], symbols[previous],
                                                       self.te_surrogates, self.seed)
            if "recon" in self.integration:
                errors = reconstruction_error(points[name], self.recon_dim,
                                              diagram=diagrams[name])
                stats.update({f"recon_h{d}": v for d, v in errors.items()})
            previous = name
        return out

    def statistics(self, diagram: Diagram) -> dict[str, float]:
        """Betti numbers at the scale, entropy and total persistence (H0; H1 suffixed _h1)."""
        deaths = diagram.finite(0)[:, 1]
        if self.scale == "auto":
            scale = self.scale_factor * float(np.median(deaths)) if len(deaths) else 0.0
        else:
            scale = float(self.scale)
        betti = betti_numbers(diagram, scale)
        stats = {"betti0": float(betti.get(0, 0)), "scale": scale,
                 "entropy": persistence_entropy(diagram, 0),
                 "total_persistence": total_persistence(diagram, 0)}
        if self.max_dim >= 1:
            stats.update({"betti1": float(betti.get(1, 0)),
                          "entropy_h1": persistence_entropy(diagram, 1),
                          "total_persistence_h1": total_persistence(diagram, 1)})
        return stats

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "probe": self.probe}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))
        self.probe = state_dict.get("probe")


def diagram_image(diagrams: Mapping[str, Diagram], title: str = "") -> np.ndarray:
    """An RGB image (H, W, 3) uint8: one persistence diagram (H0, H1) per layer, side by side;
    infinite deaths are drawn on a dashed line above the finite ones."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(diagrams), 1)
    fig = Figure(figsize=(3.6 * n, 3.4), dpi=80)
    canvas = FigureCanvasAgg(fig)  # no pyplot: no global figure state, safe in any process
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (name, diagram) in zip(axes[0], diagrams.items(), strict=False):
        finite = np.concatenate([diagram.finite(d) for d in diagram.dims])
        top = float(finite[:, 1].max()) * 1.1 if len(finite) else 1.0
        for dim, color in ((0, "tab:blue"), (1, "tab:orange")):
            p = diagram[dim]
            if len(p):
                deaths = np.where(np.isfinite(p[:, 1]), p[:, 1], top)
                ax.scatter(p[:, 0], deaths, s=6, c=color, label=f"H{dim} ({len(p)})")
        ax.plot([0, top], [0, top], "k-", lw=0.5)
        ax.axhline(top, color="grey", ls="--", lw=0.5)
        ax.set(title=name, xlabel="birth", ylabel="death")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return rgba[..., :3].copy()
