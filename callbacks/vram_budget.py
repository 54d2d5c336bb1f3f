"""Estimate training memory before the first step, check it against a budget, log the real peak.

The estimate (``estimate_memory`` for a built net, ``estimate_bytes`` from an architecture name
and config values, per GPU) has exact parts and modelled parts, with no fitted offsets:

* exact, in bytes, from the parameters and the optimizer: weights (numel x element size at the
  run's precision, tied tensors once), gradients (trainable ones), optimizer state (Adam /
  AdamW: ``exp_avg`` + ``exp_avg_sq`` (+ ``max_exp_avg_sq`` with amsgrad) and a 4-byte
  ``step`` per tensor; SGD: one momentum buffer if momentum > 0);
* under ``*-mixed`` precision, the half-precision copies autocast makes of every matrix
  parameter and the matmuls keep for backward (2 bytes x numel of the >= 2-D parameters);
* modelled by the architecture's config itself (``config.activation_bytes``, each term
  documented on the config classes in ``lit_models/archs/``, after Korthikanti et al. 2023):
  activations saved for backward per micro-batch x sequence (with activation checkpointing:
  the block inputs plus one block), and the backward's transient (the larger of the loss's:
  logits plus float32 log-softmax gradients, and one block's backward temporaries);
* the end of the forward: the logits and, under mixed precision, their float32 copy for the
  loss, while the previous step's gradients still exist (Lightning zeroes them, set to None,
  between forward and backward);
* the optimizer step's temporaries: on CUDA the foreach AdamW's one float32 tensor per
  parameter of its largest group (``exp_avg_sq.sqrt()``), on CPU (one tensor at a time) two
  tensors the size of the largest parameter;
* the strategy, per GPU: under FSDP (``sharded``) weights, gradients, optimizer state and step
  temporaries are divided by the world size (dim-0 shards, padded), plus a working set of
  unsharded parameters (the root unit: embeddings and head, and two blocks: the current and the
  prefetched one) and unsharded gradients (root and one block) before their reduce-scatter;
  under DDP nothing is divided and the gradient buckets add one copy of the gradients;
* on CUDA the caching allocator's rounding (512-byte blocks: half a block per live tensor).

The peak is the weights, optimizer state, communication buffers and rounding plus the largest
of three moments: the start of backward (activations + transient, + gradients when they
accumulate over micro-batches), the end of the forward (activations + logits + the previous
gradients) and the optimizer step (gradients + step temporaries). The CUDA context (~0.3-0.5 GB)
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
from collections.abc import Mapping
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
    forward_transient: int = 0
    optimizer_step: int = 0
    communication: int = 0
    rounding: int = 0
    accumulating: bool = False  # gradients of earlier micro-batches live through backward

    @property
    def total(self) -> int:
        backward = (self.autocast_copies + self.activations + self.transient
                    + (self.grads if self.accumulating else 0))
        forward_end = self.autocast_copies + self.activations + self.forward_transient + self.grads
        step = self.grads + self.optimizer_step
        return (self.weights + self.optimizer + self.communication + self.rounding
                + max(backward, forward_end, step))

    def describe(self) -> str:
        parts = ", ".join(f"{f.name} {getattr(self, f.name) / GB:.3f}" for f in fields(self)
                          if f.name != "accumulating")
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
                     checkpointing: bool = False, device: str = "cpu") -> tuple[int, int]:
    """(saved activations, cross-entropy backward transient) in bytes: what the architecture's
    config says (``config.activation_bytes``, each term documented there: the GPT's in
    ``lit_models/archs/gpt.py``, QTG's extra terms in ``qtg.py``). ``elem`` is the activation
    element size (2 under mixed precision)."""
    method = getattr(config, "activation_bytes", None)
    if not callable(method):
        raise ValueError(f"VRAMBudget: {type(config).__name__} has no activation_bytes(b, s, elem, "
                         "checkpointing) method, so its activation memory cannot be estimated "
                         "(token architectures inherit one from GPTConfig)")
    return method(micro_batch, seq_len, elem, checkpointing, device=device)


def _sharded_numel(p: torch.Tensor, world_size: int) -> int:
    """Elements of one rank's dim-0 shard of ``p`` (FSDP2 pads dim 0 to a multiple of the world)."""
    if p.dim() == 0:
        return 1
    return -(-p.shape[0] // world_size) * (p.numel() // max(p.shape[0], 1))


def estimate_memory(net: nn.Module, micro_batch: int, seq_len: int, precision: str = "32-true",
                    optimizer: str | torch.optim.Optimizer = "adamw",
                    checkpointing: bool | None = None, *, world_size: int = 1,
                    sharded: bool = False, accumulate: int = 1, device: str = "cuda",
                    **optimizer_options: Any) -> MemoryEstimate:
    """Peak training memory per device of ``net`` (an architecture with a ``config``) for one
    micro-batch; ``world_size``/``sharded``: the strategy (FSDP when sharded, DDP when not and
    the world is larger than 1); ``device``: "cuda" or "cpu" (optimizer temporaries, rounding)."""
    if world_size < 1:
        raise ValueError(f"VRAMBudget: world_size must be >= 1, got {world_size}")
    p_elem, a_elem = _precision_sizes(precision)
    mixed = str(precision).endswith("-mixed")
    if checkpointing is None:
        checkpointing = bool(getattr(net.config, "activation_checkpointing", False))
    params = _unique_params(net)
    trainable = [p for p in params if p.requires_grad]
    copies = 2 * sum(p.numel() for p in params if p.dim() >= 2) if mixed else 0
    acts, transient = activation_bytes(net.config, micro_batch, seq_len, a_elem, checkpointing,
                                       device)
    vocab = getattr(net.config, "vocab_size", 0)
    logits = micro_batch * seq_len * vocab * (a_elem + (4 if mixed else 0))
    weights = parameter_bytes(net, p_elem)
    grads = gradient_bytes(net, p_elem)
    state = optimizer_state_bytes(net, optimizer, p_elem, **optimizer_options)
    if device == "cuda":  # foreach AdamW: a float32 tensor per parameter of the largest group
        step = p_elem * max(sum(p.numel() for p in trainable if p.dim() >= 2),
                            sum(p.numel() for p in trainable if p.dim() < 2))
    else:  # one parameter at a time: sqrt(exp_avg_sq) and its quotient
        step = 2 * p_elem * max((p.numel() for p in trainable), default=0)
    comm = 0
    if sharded:
        shard = {id(p): _sharded_numel(p, world_size) for p in params}
        full = sum(p.numel() for p in params) or 1
        weights = sum(shard[id(p)] for p in params) * p_elem
        grads = sum(shard[id(p)] for p in trainable) * p_elem
        state = state * weights // (full * p_elem)
        step = -(-step // world_size)
        blocks = list(getattr(net, "blocks", []))
        block = max((parameter_bytes(b, p_elem) for b in blocks), default=0)
        root = full * p_elem - sum(parameter_bytes(b, p_elem) for b in blocks)
        comm = (root + 2 * block) + (root + block)  # unsharded params, then grads
    elif world_size > 1:
        comm = grads  # DDP's gradient buckets
    rounding = 0
    if device == "cuda":
        n_layer = len(list(getattr(net, "blocks", [])))
        rounding = 256 * (5 * len(params) + 32 * n_layer)
    return MemoryEstimate(
        weights=weights, grads=grads, optimizer=state, autocast_copies=copies, activations=acts,
        transient=transient, forward_transient=logits, optimizer_step=step, communication=comm,
        rounding=rounding, accumulating=accumulate > 1)


def estimate_bytes(arch_name: str, arch_config: Mapping[str, Any], batch: int, seq: int,
                   precision: str = "bf16-mixed", world_size: int = 1, sharded: bool = False,
                   *, checkpointing: bool | None = None, accumulate: int = 1,
                   device: str = "cuda", optimizer: str = "adamw") -> MemoryEstimate:
    """``estimate_memory`` from an architecture name and its config values, without building
    weights (the net is made on the meta device): what the budget callback predicts per GPU."""
    from lit_models.archs import build_arch

    with torch.device("meta"):
        net = build_arch(arch_name, dict(arch_config))
    return estimate_memory(net, batch, seq, precision, optimizer, checkpointing,
                           world_size=world_size, sharded=sharded, accumulate=accumulate,
                           device=device)


def strategy_layout(trainer: Any) -> tuple[int, bool]:
    """(world size, sharded) of a trainer's strategy: sharded for FSDP (Lightning's
    ``FSDPStrategy`` or ``ModelParallelStrategy``, on which the platform's ``trainer=fsdp``
    is built), data parallel otherwise."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    world = int(getattr(trainer, "world_size", 1) or 1)
    strategy = getattr(trainer, "strategy", None)
    return world, isinstance(strategy, FSDPStrategy | ModelParallelStrategy)


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
                  seq_len: int, accumulate: int | None = None) -> MemoryEstimate:
        world, sharded = strategy_layout(trainer)
        from lightning.pytorch.accelerators import CUDAAccelerator

        on_cuda = isinstance(getattr(trainer, "accelerator", None), CUDAAccelerator)
        return estimate_memory(pl_module.net, micro_batch, seq_len, str(trainer.precision),
                               self.optimizer, self.activation_checkpointing, world_size=world,
                               sharded=sharded,
                               accumulate=accumulate or int(trainer.accumulate_grad_batches),
                               device="cuda" if on_cuda else "cpu")

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
            est = self._estimate(trainer, pl_module, new_micro, seq, effective // new_micro)
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
        if (trainer.optimizers and self.estimate is not None
                and not strategy_layout(trainer)[1]):  # the real optimizer, exactly (unsharded)
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
