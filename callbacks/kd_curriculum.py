"""Schedule the distillation weight (the write-up's gentle 0.01 -> 0.05 curriculum).

Attribute contract: the LightningModule has a float attribute named ``attribute`` (default
``kd_weight``) that its loss multiplies the KD term by, and, when ``pm_start``/``pm_end`` are
given, one named ``pm_attribute`` (default ``pm_weight``) for the phase/magnitude terms;
``lit_models.distillation.DistillationModel`` has both. The callback overwrites them before
every training batch, so any module exposing such attributes works.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

MODES = ("linear", "cosine", "step")
INTERVALS = ("step", "epoch")


def _check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"KDCurriculum.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_range(prefix: str, start: Any, end: Any) -> tuple[float, float]:
    start, end = _check_weight(f"{prefix}start", start), _check_weight(f"{prefix}end", end)
    if end < start:
        raise ValueError(f"KDCurriculum: {prefix}end={end} < {prefix}start={start}; the curriculum "
                         "only raises the weight (use equal values for a constant one)")
    return start, end


class KDCurriculum(Callback):
    """``weight(p) = start + (end - start) * shape(p)`` with progress ``p = min(t / total, 1)``,
    ``t`` the optimizer steps (``interval="step"``) or epochs done before the batch.

    Shapes: ``linear`` ``p``; ``cosine`` ``(1 - cos(pi p)) / 2``; ``step`` ``n_stages`` equal
    plateaus from ``start`` to ``end`` (``floor(p n) / (n - 1)``, capped at 1).

    Args:
        start, end: the weight at ``p = 0`` and ``p = 1`` (``0 <= start <= end``).
        total: steps or epochs to reach ``end``; null: ``trainer.max_steps`` (or the estimated
            stepping batches) / ``trainer.max_epochs`` when fitting starts.
        pm_start, pm_end: also schedule ``pm_attribute`` (both or neither).

    The resolved ``total`` and the current weights travel in the checkpoint
    (``state_dict``), so a resumed run, even with a larger ``max_steps``, continues the same
    schedule exactly. Logs ``kd/weight`` (and ``kd/pm_weight``).
    """

    def __init__(self, start: float = 0.01, end: float = 0.05, total: int | None = None,
                 interval: str = "step", mode: str = "linear", n_stages: int = 4,
                 pm_start: float | None = None, pm_end: float | None = None,
                 attribute: str = "kd_weight", pm_attribute: str = "pm_weight") -> None:
        self.start, self.end = _check_range("", start, end)
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total <= 0):
            raise ValueError(f"KDCurriculum.total must be a positive int or null, got {total!r}")
        if interval not in INTERVALS:
            raise ValueError(f"KDCurriculum.interval must be one of {INTERVALS}, got {interval!r}")
        if mode not in MODES:
            raise ValueError(f"KDCurriculum.mode must be one of {MODES}, got {mode!r}")
        if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 2:
            raise ValueError(f"KDCurriculum.n_stages must be an int >= 2, got {n_stages!r}")
        if (pm_start is None) != (pm_end is None):
            raise ValueError("KDCurriculum: give both pm_start and pm_end, or neither")
        self.pm = None if pm_start is None else _check_range("pm_", pm_start, pm_end)
        self.total, self.interval, self.mode, self.n_stages = total, interval, mode, n_stages
        self.attribute, self.pm_attribute = attribute, pm_attribute
        self.value: float | None = None
        self.pm_value: float | None = None

    # ------------------------------------------------------------------ schedule
    def shape(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.mode == "linear":
            return p
        if self.mode == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * p))
        return min(math.floor(p * self.n_stages), self.n_stages - 1) / (self.n_stages - 1)

    def weights_at(self, t: int) -> tuple[float, float | None]:
        """(kd weight, pm weight or None) after ``t`` steps/epochs (``total`` must be set)."""
        s = self.shape(t / self.total)
        pm = None if self.pm is None else self.pm[0] + (self.pm[1] - self.pm[0]) * s
        return self.start + (self.end - self.start) * s, pm

    # --------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wanted = [self.attribute] + ([self.pm_attribute] if self.pm is not None else [])
        missing = [a for a in wanted if not isinstance(getattr(pl_module, a, None), int | float)]
        if missing:
            raise ValueError(
                f"KDCurriculum schedules {missing} but {type(pl_module).__name__} has no such float "
                "attribute; the module must expose the weight(s) its loss uses (e.g. "
                "lit_models.distillation.DistillationModel.kd_weight / pm_weight)")
        if self.total is None:
            if self.interval == "step":
                self.total = (trainer.max_steps if trainer.max_steps and trainer.max_steps > 0
                              else int(trainer.estimated_stepping_batches))
            else:
                self.total = trainer.max_epochs
            if not self.total or self.total <= 0 or not math.isfinite(self.total):
                raise ValueError("KDCurriculum.total is null and the trainer has no finite "
                                 f"max_{self.interval}s: set callbacks.kd_curriculum.total")
        if self.value is not None:  # resumed: the module starts with the checkpoint's weights
            self._apply(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        t = trainer.global_step if self.interval == "step" else trainer.current_epoch
        self.value, self.pm_value = self.weights_at(t)
        self._apply(pl_module)
        pl_module.log("kd/weight", self.value, on_step=True, on_epoch=False)
        if self.pm_value is not None:
            pl_module.log("kd/pm_weight", self.pm_value, on_step=True, on_epoch=False)

    def _apply(self, pl_module: L.LightningModule) -> None:
        setattr(pl_module, self.attribute, self.value)
        if self.pm_value is not None:
            setattr(pl_module, self.pm_attribute, self.pm_value)

    # --------------------------------------------------------------------- state
    def _settings(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "interval": self.interval, "mode": self.mode,
                "n_stages": self.n_stages, "pm": list(self.pm) if self.pm else None}

    def state_dict(self) -> dict[str, Any]:
        return {**self._settings(), "total": self.total, "value": self.value,
                "pm_value": self.pm_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {k: state_dict.get(k) for k in self._settings()}
        if saved != self._settings():
            rank_zero_warn(f"KDCurriculum: the checkpoint's schedule {saved} differs from the "
                           f"configured {self._settings()}; continuing with the configured one")
        self.total = state_dict.get("total", self.total)
        self.value, self.pm_value = state_dict.get("value"), state_dict.get("pm_value")
