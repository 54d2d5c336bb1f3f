"""Estimate training memory before the first step, check it against a budget, log the real peak.

The estimate (``estimate_memory``) has exact parts and one modelled part:

* exact, in bytes, from the parameters and the optimizer: weights (numel x element size at the
  run's precision, tied tensors once), gradients (same, trainable ones), optimizer state (Adam /
  AdamW: ``exp_avg`` + ``exp_avg_sq`` in the parameter's dtype (+ ``max_exp_avg_sq`` with
  amsgrad) and a 4-byte ``step`` per tensor; SGD: one momentum buffer if momentum > 0);
* under ``*-mixed`` precision, the half-precision copies autocast keeps of every matrix
  parameter during a step (2 bytes x numel of the >= 2-D parameters);
* modelled, by the architecture's config itself: activations saved for backward per
  micro-batch x sequence (``config.activation_bytes``, each term documented on the config
  classes in ``lit_models/archs/``, after Korthikanti et al. 2023, "Reducing Activation
  Recomputation in Large Transformer Models"), with or without activation checkpointing, plus
  the cross-entropy backward's float32 transients. No fitted offsets.

The sum is an upper bound of ``torch.cuda.max_memory_allocated``: gradients grow while
activations are freed in backward, so they never fully coexist. The CUDA context (~0.3-0.5 GB)
is outside the allocator, which is why the default target (7) is below the budget (8). Sizes are
in GiB (2^30 bytes), written "GB" as GPU memory is sold.

Modes when the estimate exceeds ``target_gb``: ``warn`` (log it), ``fail`` (raise before the
first step, with the numbers and what to change), ``fit`` (lower the datamodule's micro-batch to
the largest divisor of the effective batch that fits and raise ``accumulate_grad_batches`` so
``micro_batch x accumulation`` is unchanged). During training it logs ``vram/estimate_gb`` and
``vram/peak_gb`` (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS, which also counts
the interpreter and libraries), and reports estimate vs measured peak at the end of training.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, fields
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

log = logging.getLogger("callbacks.vram_budget")
_info, _warn = rank_zero_only(log.info), rank_zero_only(log.warning)

GB = 2**30
MODES = ("warn", "fail", "fit")
# bytes per element of (parameters, activations) for each Lightning precision
PRECISIONS = {"32-true": (4, 4), "32": (4, 4), "64-true": (8, 8), "16-mixed": (4, 2),
              "bf16-mixed": (4, 2), "16-true": (2, 2), "bf16-true": (2, 2)}


@dataclass
class MemoryEstimate:
    """Bytes per part of the training peak (see the module docstring)."""

    weights: int
    grads: int
    optimizer: int
    autocast_copies: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        parts = ", ".join(f"{f.name} {getattr(self, f.name) / GB:.3f}" for f in fields(self))
        return f"{self.total / GB:.2f} GB ({parts})"


def _precision_sizes(precision: str) -> tuple[int, int]:
    key = str(precision)
    if key not in PRECISIONS:
        raise ValueError(f"VRAMBudget: unknown precision {key!r}; known: {sorted(PRECISIONS)}")
    return PRECISIONS[key]


def _unique_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters())  # parameters() already yields tied tensors once


def parameter_bytes(module: nn.Module, elem: int | None = None) -> int:
    """Bytes of the parameters (tied ones once), at ``elem`` bytes each if given."""
    return sum(p.numel() * (elem or p.element_size()) for p in _unique_params(module))


def gradient_bytes(module: nn.Module, elem: int | None = None) -> int:
    """Bytes of the gradients backward will allocate (trainable parameters)."""
    return sum(p.numel() * (elem or p.element_size()) for p in _unique_params(module)
               if p.requires_grad)


def optimizer_state_bytes(module: nn.Module, optimizer: str | torch.optim.Optimizer = "adamw",
                          elem: int | None = None, **options: Any) -> int:
    """Exact bytes of the optimizer state after its first step, by optimizer type.

    ``optimizer``: a built optimizer (type and options read from it) or a name ("adam",
    "adamw", "sgd"). Adam/AdamW: two states per parameter (three with amsgrad) in the
    parameter's dtype and a float32 ``step`` tensor per parameter tensor; SGD: one momentum
    buffer when momentum > 0.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        options = {**optimizer.defaults, **options}
        name = type(optimizer).__name__.lower()
    else:
        params, name = [p for p in _unique_params(module) if p.requires_grad], optimizer.lower()
    numel = sum(p.numel() * (elem or p.element_size()) for p in params)
    if name in ("adam", "adamw"):
        states = 3 if options.get("amsgrad") else 2
        return states * numel + 4 * len(params)
    if name == "sgd":
        return numel if options.get("momentum", 0) else 0
    raise ValueError(f"VRAMBudget: no state rule for optimizer {name!r} (known: adam, adamw, sgd)")


def activation_bytes(config: Any, micro_batch: int, seq_len: int, elem: int,
                     checkpointing: bool = False) -> tuple[int, int]:
    """(saved activations, cross-entropy backward transient) in bytes: what the architecture's
    config says (``config.activation_bytes``, each term documented there: the GPT's in
    ``lit_models/archs/gpt.py``, QTG's extra terms in ``qtg.py``). ``elem`` is the activation
    element size (2 under mixed precision)."""
    method = getattr(config, "activation_bytes", None)
    if not callable(method):
        raise ValueError(f"VRAMBudget: {type(config).__name__} has no activation_bytes(b, s, elem, "
                         "checkpointing) method, so its activation memory cannot be estimated "
                         "(token architectures inherit one from GPTConfig)")
    return method(micro_batch, seq_len, elem, checkpointing)


def estimate_memory(net: nn.Module, micro_batch: int, seq_len: int, precision: str = "32-true",
                    optimizer: str | torch.optim.Optimizer = "adamw",
                    checkpointing: bool | None = None, **optimizer_options: Any) -> MemoryEstimate:
    """Peak training memory of ``net`` (an architecture with a ``config``) for one micro-batch."""
    p_elem, a_elem = _precision_sizes(precision)
    if checkpointing is None:
        checkpointing = bool(getattr(net.config, "activation_checkpointing", False))
    copies = 0
    if str(precision).endswith("-mixed"):
        copies = 2 * sum(p.numel() for p in _unique_params(net) if p.dim() >= 2)
    acts, transient = activation_bytes(net.config, micro_batch, seq_len, a_elem, checkpointing)
    return MemoryEstimate(
        weights=parameter_bytes(net, p_elem), grads=gradient_bytes(net, p_elem),
        optimizer=optimizer_state_bytes(net, optimizer, p_elem, **optimizer_options),
        autocast_copies=copies, activations=acts, transient=transient)


def measured_peak_bytes(device: torch.device) -> int:
    """CUDA: ``max_memory_allocated``; CPU: peak resident set size of this process (``VmHWM``,
    which ``reset_cpu_peak`` can lower to the current RSS; ``ru_maxrss`` where /proc is absent)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    hwm = _proc_status_bytes("VmHWM:")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_cpu_peak() -> int | None:
    """Reset this process's RSS high-water mark to its current RSS (Linux ``clear_refs``), so the
    CPU peak measured afterwards is training's and not, e.g., tokenization's; returns the RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _proc_status_bytes("VmRSS:")


class VRAMBudget(Callback):
    """Check the estimated training peak against ``target_gb`` before the first step.

    Args:
        budget_gb: the device's memory (GB = GiB).
        target_gb: what the estimate must stay under (headroom for CUDA context, fragmentation).
        mode: ``warn`` | ``fail`` | ``fit`` (see the module docstring).
        activation_checkpointing: whether the model recomputes blocks; None: read the
            architecture config's ``activation_checkpointing`` (False if it has none).
        optimizer: "auto" (the platform recipes' AdamW) or a name: adam | adamw | sgd.
    """

    def __init__(self, budget_gb: float = 8.0, target_gb: float = 7.0, mode: str = "warn",
                 activation_checkpointing: bool | None = None, optimizer: str = "auto") -> None:
        for key, value in (("budget_gb", budget_gb), ("target_gb", target_gb)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"VRAMBudget.{key} must be a number > 0, got {value!r}")
        if target_gb > budget_gb:
            raise ValueError(f"VRAMBudget.target_gb={target_gb} must be <= budget_gb={budget_gb}")
        if mode not in MODES:
            raise ValueError(f"VRAMBudget.mode must be one of {MODES}, got {mode!r}")
        if optimizer not in ("auto", "adam", "adamw", "sgd"):
            raise ValueError(f"VRAMBudget.optimizer must be auto | adam | adamw | sgd, got {optimizer!r}")
        self.budget_gb, self.target_gb, self.mode = float(budget_gb), float(target_gb), mode
        self.activation_checkpointing = activation_checkpointing
        self.optimizer = "adamw" if optimizer == "auto" else optimizer
        self.estimate: MemoryEstimate | None = None
        self.peak_bytes = 0
        self.cpu_base_bytes: int | None = None  # CPU: non-tensor RSS at the first step

    # ------------------------------------------------------------------ estimate
    def _estimate(self, trainer: L.Trainer, pl_module: L.LightningModule, micro_batch: int,
                  seq_len: int) -> MemoryEstimate:
        return estimate_memory(pl_module.net, micro_batch, seq_len, str(trainer.precision),
                               self.optimizer, self.activation_checkpointing)

    def _shape(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, int]:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "batch_size"):
            raise ValueError("VRAMBudget needs a datamodule with a batch_size attribute "
                             "(the micro-batch it estimates for)")
        seq = getattr(dm, "block_size", None) or pl_module.net.config.block_size
        return int(dm.batch_size), int(seq)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(getattr(pl_module, "net", None), "config"):
            raise ValueError("VRAMBudget needs a platform module with .net.config "
                             f"(got {type(pl_module).__name__})")
        micro, seq = self._shape(trainer, pl_module)
        accum = int(trainer.accumulate_grad_batches)
        est = self._estimate(trainer, pl_module, micro, seq)
        self.estimate = est
        head = (f"VRAM estimate for micro-batch {micro} x {seq} tokens at {trainer.precision}: "
                f"{est.describe()}; target {self.target_gb} GB of a {self.budget_gb} GB budget")
        if est.total <= self.target_gb * GB:
            _info(head + " -> fits")
            return
        if self.mode == "warn":
            _warn(head + " -> OVER TARGET (mode=warn: training anyway)")
        elif self.mode == "fail":
            raise MemoryError(head + f" -> over target by {est.total / GB - self.target_gb:.2f} "
                              "GB. Lower data.batch_size and raise trainer.accumulate_grad_batches "
                              "(or callbacks.vram_budget.mode=fit does it), shorten "
                              "data.block_size, enable model.arch_config.activation_checkpointing, "
                              "or use a smaller model.")
        else:
            self._fit(trainer, pl_module, micro, seq, accum, head)

    def _fit(self, trainer: L.Trainer, pl_module: L.LightningModule, micro: int, seq: int,
             accum: int, head: str) -> None:
        effective = micro * accum
        for new_micro in range(micro - 1, 0, -1):
            if effective % new_micro:
                continue
            est = self._estimate(trainer, pl_module, new_micro, seq)
            if est.total <= self.target_gb * GB:
                trainer.datamodule.batch_size = new_micro
                trainer.accumulate_grad_batches = effective // new_micro
                self.estimate = est
                _warn(f"{head} -> mode=fit: micro-batch {micro} -> {new_micro}, "
                               f"accumulate_grad_batches {accum} -> {effective // new_micro} "
                               f"(effective batch {effective} unchanged); new estimate "
                               f"{est.describe()}")
                return
        raise MemoryError(head + f" -> even micro-batch 1 (accumulation {effective}) does not fit. "
                          "Shorten data.block_size, enable "
                          "model.arch_config.activation_checkpointing, or use a smaller model.")

    # ------------------------------------------------------------------- measure
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:  # the CPU peak counts the interpreter, libraries and data too: measure that base
            rss = reset_cpu_peak()
            if rss is not None:
                self.cpu_base_bytes = max(rss - parameter_bytes(pl_module.net), 0)
        if trainer.optimizers and self.estimate is not None:  # the real optimizer, exactly
            self.estimate.optimizer = optimizer_state_bytes(
                pl_module.net, trainer.optimizers[0], _precision_sizes(str(trainer.precision))[0])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.peak_bytes = max(self.peak_bytes, measured_peak_bytes(pl_module.device))
        if self.estimate is not None:
            pl_module.log_dict({"vram/estimate_gb": self.estimate.total / GB,
                                "vram/peak_gb": self.peak_bytes / GB}, on_step=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.estimate is None or not self.peak_bytes:
            return
        what = "max_memory_allocated" if pl_module.device.type == "cuda" else "peak process RSS"
        peak = self.peak_bytes / GB
        verdict = ("fits the target" if peak <= self.target_gb else
                   "over the target, within the budget" if peak <= self.budget_gb else
                   "OVER THE BUDGET")
        base = ""
        if pl_module.device.type != "cuda" and self.cpu_base_bytes is not None:
            base = (f"; {peak - self.cpu_base_bytes / GB:.2f} GB of it above the process's base "
                    f"({self.cpu_base_bytes / GB:.2f} GB: RSS at the first step minus the weights), "
                    "the figure comparable with the estimate")
        _info(f"VRAM report: estimate {self.estimate.total / GB:.2f} GB, measured peak "
                       f"{peak:.2f} GB ({what}, step {trainer.global_step}{base}), target "
                       f"{self.target_gb} GB, budget {self.budget_gb} GB -> {verdict}")

    def state_dict(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak_bytes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.peak_bytes = int(state_dict.get("peak_bytes", 0))
