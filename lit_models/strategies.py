"""Fully-sharded data parallel (FSDP2) on Lightning's ``ModelParallelStrategy``, CPU included.

Lightning 2.6's ``FSDPStrategy`` refuses a CPU accelerator and, through its precision plugin,
norm-based gradient clipping (the platform's default ``gradient_clip_val: 1.0``).
``ModelParallelStrategy`` has neither limit: the module applies PyTorch's ``fully_shard`` itself
in ``configure_model`` (:func:`shard_network`), one call per transformer block named by the
architecture registry (``shard_unit``), then one for the rest. Gradient clipping by norm works
because the gradients are DTensors and ``clip_grad_norm_`` reduces their norm across ranks.

:class:`FSDP2Strategy` fixes the mesh to one data-parallel dimension over every rank (Lightning's
``"auto"`` would make it tensor parallel within a node), writes full, consolidated checkpoints
by default (any checkpoint loads in a single process: evaluate, generate, serve) and reads them
like every other platform checkpoint: digest verified, ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lhp.errors import UserError
from lit_models.archs.registry import SHARD_UNITS, shard_unit


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as plain FSDP2 data parallelism over all ``num_nodes x devices``
    ranks, with consolidated checkpoints unless ``save_distributed_checkpoint=True``."""

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loader (it scatters a full checkpoint into the shards), after the
        platform's own check of the file's digest; never unpickles code."""
        path = Path(checkpoint_path)
        if path.is_file():
            from lit_models.checkpoints import load_checkpoint

            load_checkpoint(path)  # one clear error for a corrupt or foreign file
        return super().load_checkpoint(checkpoint_path, weights_only=True)


def shard_network(net: nn.Module, arch: str, mesh: Any, reshard_after_forward: bool = True) -> None:
    """Apply ``fully_shard`` to every block of ``net`` (the architecture's ``shard_unit``), then
    to ``net`` itself (embeddings, final norm, head). Idempotent: a sharded net is left alone."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(net, FSDPModule):
        return
    unit = shard_unit(arch)
    if unit is None:
        raise UserError(
            f"trainer=fsdp: architecture {arch!r} names no block class to shard (shard_unit in "
            f"its @register; named for {sorted(SHARD_UNITS)}); use trainer=ddp for it")
    blocks = [m for m in net.modules() if isinstance(m, unit)]
    if not blocks:
        raise UserError(f"trainer=fsdp: architecture {arch!r} has no {unit.__name__} module to "
                        "shard; use trainer=ddp for it")
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(net, mesh=mesh, reshard_after_forward=reshard_after_forward)
