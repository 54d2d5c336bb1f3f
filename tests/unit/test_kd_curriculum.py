"""KD weight curriculum: schedule values, argument checks, attribute contract, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from callbacks.kd_curriculum import KDCurriculum


def test_linear_schedule_defaults() -> None:
    cb = KDCurriculum(total=100)
    assert cb.weights_at(0) == (pytest.approx(0.01), None)
    assert cb.weights_at(50)[0] == pytest.approx(0.03)
    assert cb.weights_at(100)[0] == pytest.approx(0.05)
    assert cb.weights_at(250)[0] == pytest.approx(0.05)  # held at `end` after `total`


def test_cosine_and_step_schedules() -> None:
    cos = KDCurriculum(start=0.0, end=1.0, total=10, mode="cosine")
    assert [round(cos.weights_at(t)[0], 6) for t in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert cos.weights_at(2)[0] == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.2)))
    step = KDCurriculum(start=0.01, end=0.04, total=8, mode="step", n_stages=4)
    values = [step.weights_at(t)[0] for t in range(10)]
    assert values == pytest.approx([0.01, 0.01, 0.02, 0.02, 0.03, 0.03, 0.04, 0.04, 0.04, 0.04])


def test_pm_weight_is_scheduled_along() -> None:
    cb = KDCurriculum(total=4, pm_start=0.0, pm_end=2.0)
    assert cb.weights_at(2) == (pytest.approx(0.03), pytest.approx(1.0))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": 0.05, "end": 0.01}, "end=0.01 < start=0.05"),
    ({"start": -0.01}, "start must be a finite number >= 0"),
    ({"end": float("inf")}, "end must be a finite number >= 0"),
    ({"total": 0}, "total must be a positive int"),
    ({"mode": "exp"}, "mode must be one of"),
    ({"interval": "batch"}, "interval must be one of"),
    ({"mode": "step", "n_stages": 1}, "n_stages must be an int >= 2"),
    ({"pm_start": 0.1}, "both pm_start and pm_end"),
    ({"pm_start": 0.5, "pm_end": 0.1}, "pm_end=0.1 < pm_start=0.5"),
])
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KDCurriculum(**kwargs)


class Toy(L.LightningModule):
    """Any module exposing ``kd_weight`` works: here it scales an auxiliary loss, and the
    weight used at each step is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.kd_weight = 0.0
        self.seen: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(self.kd_weight)
        out = self.layer(batch[0])
        return out.pow(2).mean() + self.kd_weight * out.abs().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(root: Path, max_steps: int, ckpt_path: str | None = None, **cb_kwargs) -> tuple[Toy, KDCurriculum]:
    L.seed_everything(0)
    model, cb = Toy(), KDCurriculum(**cb_kwargs)
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)
    trainer = L.Trainer(max_steps=max_steps, default_root_dir=root, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(model, data, ckpt_path=ckpt_path, weights_only=True)
    return model, cb


def test_resume_continues_the_schedule_exactly(tmp_path: Path) -> None:
    full, _ = _fit(tmp_path / "full", 12, total=20, mode="cosine")
    assert full.seen == [KDCurriculum(total=20, mode="cosine").weights_at(t)[0] for t in range(12)]
    first, _ = _fit(tmp_path / "first", 5, total=20, mode="cosine")
    ckpt = tmp_path / "first" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["callbacks"]
    state = next(v for k, v in saved.items() if "KDCurriculum" in k)
    assert state["total"] == 20 and state["value"] == pytest.approx(first.seen[-1])
    # resumed with total=null: the checkpoint's total (20) is used, not max_steps (12)
    resumed, cb = _fit(tmp_path / "resumed", 12, ckpt_path=str(ckpt), mode="cosine")
    assert cb.total == 20
    assert first.seen + resumed.seen == full.seen  # the same weight at every step
    # (bitwise-equal weights after resume, with the platform's resumable data order:
    # tests/integration/test_indra.py)


def test_module_without_the_attribute_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no such float attribute"):
        _fit(tmp_path, 2, attribute="lambda_kd")
