"""Lightning's ThroughputMonitor, preset for the platform's dict token batches.

Logs under its own prefix, ``throughput/<stage>/...`` (e.g. ``throughput/train/device_tokens_per_sec``,
and MFU where the module sets ``flops_per_batch`` and the device's peak FLOPs are known).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor


def _items(batch: dict[str, Any]) -> Any:
    # Coordinate batches (one character per position) have ``coords`` instead of token ids.
    return batch["input_ids"] if "input_ids" in batch else batch["coords"]


def _batch_size(batch: dict[str, Any]) -> int:
    return int(_items(batch).size(0))


def _tokens(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(_items(batch).numel())


class TokenThroughputMonitor(ThroughputMonitor):
    def __init__(self, window_size: int = 50) -> None:
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        super().__init__(batch_size_fn=_batch_size, length_fn=_tokens,
                         window_size=window_size, separator="_")

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        # Same as Lightning 2.6's ThroughputMonitor._compute (pinned), but named
        # throughput/<stage>/<metric> with "items"/"lengths" called tokens, so the metrics stay
        # out of the train/ and val/ namespaces (tests/integration/test_train.py checks names).
        if not trainer._logger_connector.should_update_logs:
            return
        stage = trainer.state.stage
        metrics = self._throughputs[stage].compute()
        renamed = {
            f"throughput/{stage.value}/{k.replace('items', 'tokens').replace('lengths', 'tokens')}": v
            for k, v in metrics.items()
        }
        trainer._logger_connector.log_metrics(renamed, step=iter_num)
