"""Lightning's ThroughputMonitor, preset for the platform's dict token batches.

Logs ``throughput/samples_per_sec``, ``throughput/items_per_sec`` (tokens/s) and, where the
module sets ``flops_per_batch`` and the device's peak is known, MFU.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor


def _batch_size(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].size(0))


def _tokens(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


class TokenThroughputMonitor(ThroughputMonitor):
    def __init__(self, window_size: int = 50, separator: str = "/") -> None:
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        super().__init__(batch_size_fn=_batch_size, length_fn=_tokens,
                         window_size=window_size, separator=separator)
