"""The default experiment learns: a tiny smoke run drives its training loss below half its start."""

from __future__ import annotations

import csv
from pathlib import Path

from callbacks.progress import StepProgressBar
from experiments.train import train
from tests.conftest import compose_config

STEPS = 80


def train_losses(out: Path) -> list[float]:
    """``train/loss`` per logged step, in step order, from the run's CSV log."""
    path = next(out.glob("csv/version_*/metrics.csv"))
    with open(path) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def test_smoke_tiny_training_loss_halves(tmp_path: Path) -> None:
    """80 steps of ``experiment=smoke_tiny`` (lr 3e-3): the last losses fall below half the first."""
    overrides = ["experiment=smoke_tiny", f"trainer.max_steps={STEPS}", "model.optimizer.lr=3e-3",
                 "trainer.log_every_n_steps=1", "trainer.val_check_interval=30",
                 "trainer.limit_val_batches=1", "logger=csv", "test=false"]
    cfg = compose_config("train", overrides, tmp_path / "run", data_dir=tmp_path / "data")
    _, objects = train(cfg)
    assert objects["trainer"].global_step == STEPS
    losses = train_losses(tmp_path / "run")
    assert len(losses) >= STEPS // 2, f"too few logged losses: {losses}"
    start, end = losses[0], min(losses[-3:])
    assert end < start / 2, f"training loss did not halve: {start:.3f} -> {end:.3f} ({losses})"
    # the default progress bar counts steps, not `Epoch 0/-2` (max_epochs=-1 when training by steps)
    bar = next(c for c in objects["callbacks"] if isinstance(c, StepProgressBar))
    assert bar._get_train_description(0).strip() == f"step {STEPS}/{STEPS}"
