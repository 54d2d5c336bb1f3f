"""Lightning's LearningRateMonitor, with the platform's metric names.

One series per parameter group, named after the group's ``name`` key
(``lit_models.optim`` names them ``decay`` and ``no_decay``): ``train/lr_decay``,
``train/lr_no_decay``, and with ``log_momentum`` / ``log_weight_decay`` ``train/momentum_decay``,
``train/weight_decay_decay``, ... A group without a name is ``pg<i>`` (1-based); an optimizer with a
single unnamed group logs ``train/lr``. A second optimizer adds ``_opt<i>`` (0-based):
``train/lr_opt1_decay``. Lightning's own names are ``lr-AdamW/pg1`` and so on.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor
from lightning.pytorch.core.optimizer import LRSchedulerConfig
from torch.optim import Optimizer


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Logs ``<prefix>lr_<group>`` per parameter group (``train/lr_decay``, ``train/lr_no_decay``)."""

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = "step",
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        prefix: str = "train/",
    ) -> None:
        super().__init__(logging_interval=logging_interval, log_momentum=log_momentum,
                         log_weight_decay=log_weight_decay)
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string such as 'train/', got {prefix!r}")
        self.prefix = prefix

    def _stat_name(self, stat: str, lr_name: str) -> str:
        """``train/lr_decay`` -> ``train/<stat>_decay``."""
        return self.prefix + stat + lr_name[len(self.prefix) + len("lr"):]

    # Lightning 2.6 (pinned) names every series in this one method, for optimizers with and without
    # a scheduler; it also counts optimizer types and refuses duplicate group names there.
    def _check_duplicates_and_update_name(
        self,
        optimizer: Optimizer,
        name: str,
        seen_optimizers: list[Optimizer],
        seen_optimizer_types: defaultdict[type[Optimizer], int],
        lr_scheduler_config: LRSchedulerConfig | None,
    ) -> list[str]:
        super()._check_duplicates_and_update_name(
            optimizer, name, seen_optimizers, seen_optimizer_types, lr_scheduler_config)
        index = len(seen_optimizers) - 1  # this optimizer's position, schedulers' first
        base = f"{self.prefix}lr" + (f"_opt{index}" if index else "")
        groups = optimizer.param_groups
        names = []
        for i, group in enumerate(groups):
            group_name = group.get("name") or (f"pg{i + 1}" if len(groups) > 1 else None)
            names.append(f"{base}_{group_name}" if group_name else base)
        return names

    def _extract_momentum(self, param_group: dict[str, Any], name: str,
                          use_betas: bool) -> dict[str, float]:
        name = self._stat_name("momentum", name.removesuffix("-momentum"))
        return super()._extract_momentum(param_group, name, use_betas)

    def _extract_weight_decay(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        name = self._stat_name("weight_decay", name.removesuffix("-weight_decay"))
        return super()._extract_weight_decay(param_group, name)
