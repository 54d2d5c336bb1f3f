"""Training never looks good when it diverged; last.ckpt is written when promised.

Every run here is a real (tiny) Lightning run: ``experiment=smoke_tiny`` and friends.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.divergence_guard import DivergenceGuard
from callbacks.last_checkpoint import LastCheckpoint
from experiments.train import train
from lhp.errors import TrainingDiverged
from lit_models.checkpoint_io import AtomicCheckpointIO
from tests.conftest import REPO, compose_config

TINY = ["experiment=smoke_tiny", "logger=csv", "test=false"]


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("*.ckpt"))


def _all_finite(path: Path) -> bool:
    state = AtomicCheckpointIO().load_checkpoint(path)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


# ------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("experiment", ["smoke_tiny", "fractal_book_tiny", "indra_ce_only_tiny"])
def test_diverged_run_stops_and_saves_nothing_diverged(make_cfg, experiment: str) -> None:
    """lr=1e12: the loss is NaN by step 2. The run must fail with TrainingDiverged, not report a
    val/loss of 0.0 and save ``step…-val_loss0.0000.ckpt`` as best (language model, coordinate
    decoder and distillation recipes alike)."""
    cfg = make_cfg([f"experiment={experiment}", "logger=csv", "test=false", "model.optimizer.lr=1e12"])
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: .*(not finite|= nan)"):
        train(cfg)
    out = Path(cfg.paths.output_dir)
    assert not [p for p in _checkpoints(out) if p.name != "last.ckpt"], "a best checkpoint was saved"
    for path in _checkpoints(out):
        assert _all_finite(path), f"{path} holds the diverged weights"


def test_divergence_message_names_step_metric_and_last_good_checkpoint(make_cfg) -> None:
    # default cadence (10 % of 20 steps = every 2): the NaN loss of step 2 stops the run before
    # its save, so nothing was ever saved
    cfg = make_cfg(TINY + ["model.optimizer.lr=1e12"])
    with pytest.raises(TrainingDiverged, match="at step 2: train/loss = nan.*no checkpoint was saved"):
        train(cfg)
    assert not _checkpoints(Path(cfg.paths.output_dir))

    # a save after every step: step 1's last.ckpt (finite weights) is the last good checkpoint
    cfg = make_cfg(TINY + ["model.optimizer.lr=1e12", "callbacks.last_checkpoint.every_n_train_steps=1"],
                   out="every_step")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(TrainingDiverged, match=f"at step 2: train/loss = nan.*last good checkpoint: {last}"):
        train(cfg)
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 1 and _all_finite(last)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-step smoke_tiny run: its module and datamodule, reused by direct Lightning runs."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = compose_config("train", TINY + ["trainer.max_steps=2"], root / "run", root / "data")
    _, objects = train(cfg)
    return objects


def _trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: object) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
                     num_sanity_val_steps=0, **kwargs)


def test_nan_eval_metrics_propagate_and_stop_the_run(tiny: dict, tmp_path: Path) -> None:
    """NaN weights: val/loss is NaN (SumMetric used to drop the NaNs and report 0.0), and the
    guard turns it into TrainingDiverged naming the metric."""
    model, dm = tiny["model"], tiny["datamodule"]
    weight = model.net.lm_head.weight
    good = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    try:
        metrics = _trainer(tmp_path, [], limit_val_batches=2).validate(model, datamodule=dm,
                                                                       verbose=False)[0]
        assert math.isnan(metrics["val/loss"]) and math.isnan(metrics["val/bpc"])
        with pytest.raises(TrainingDiverged, match=r"val/bpc = nan, val/loss = nan"):
            _trainer(tmp_path, [DivergenceGuard()], limit_val_batches=2).validate(model, datamodule=dm)
    finally:
        with torch.no_grad():
            weight.copy_(good)


# ---------------------------------------------------------------------------- cadence
class _SavedSteps(Callback):
    """Records the global step of every checkpoint written."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.steps.append(trainer.global_step)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]),                           # 10 % of max_steps
    ({"every_n_train_steps": 7}, [7, 14, 20]),                            # and at the end
    ({"every_n_train_steps": 1000, "every_n_minutes": 1e-9}, list(range(1, 21))),  # time trigger
])
def test_last_checkpoint_cadence_without_validation(tiny: dict, tmp_path: Path, kwargs: dict,
                                                     expected: list[int]) -> None:
    saved = _SavedSteps()
    cb = LastCheckpoint(dirpath=str(tmp_path / "checkpoints"), **kwargs)
    trainer = _trainer(tmp_path, [cb, saved], max_steps=20, limit_val_batches=0)
    trainer.fit(tiny["model"], datamodule=tiny["datamodule"])
    assert saved.steps == expected
    assert cb.last_model_path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_last_checkpoint_rejects_bad_arguments() -> None:
    from lhp.errors import UserError

    with pytest.raises(UserError, match="every_n_train_steps must be a positive integer"):
        LastCheckpoint(every_n_train_steps=0)
    with pytest.raises(UserError, match="every_n_minutes must be a positive number"):
        LastCheckpoint(every_n_minutes=-1)


def test_sigkill_before_first_validation_keeps_cadence_checkpoint_and_resume_is_exact(
        tmp_path: Path) -> None:
    """Checkpoints every 10 steps, validation only at step 100: a SIGKILL as soon as last.ckpt
    appears finds it complete at a multiple of 10 (Lightning's monitored checkpoint postponed it
    to the first validation), and resume=auto from it equals an uninterrupted run bitwise."""
    data, logs = tmp_path / "data", tmp_path / "logs"
    common = ["experiment=smoke_tiny", "logger=csv", "test=false", "trainer.max_steps=1000",
              "trainer.val_check_interval=100", "model.arch_config.dropout=0.1"]
    killed = logs / "train" / "smoke_tiny" / "killed"
    cmd = [sys.executable, "-m", "experiments.train", *common,
           "callbacks.model_checkpoint.every_n_train_steps=10", "extras.print_config=false",
           f"hydra.run.dir={killed}", f"paths.data_dir={data}", f"paths.log_dir={logs}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1].decode()[-3000:]
    assert last.exists(), f"no last.ckpt before the kill\n{stderr}"
    step = AtomicCheckpointIO().load_checkpoint(last)["global_step"]  # complete: digest verifies
    assert step > 0 and step % 10 == 0 and step < 100, step

    budget = [f"callbacks.token_budget.max_tokens={(step + 6) * 8 * 32}"]  # stop 6 steps later
    cfg = compose_config("train", common + budget + ["resume=auto"], killed.parent / "resumed",
                         data, log_dir=logs)
    _, resumed = train(cfg)
    cfg = compose_config("train", common + budget, tmp_path / "full", data, log_dir=tmp_path / "other")
    _, full = train(cfg)
    assert resumed["trainer"].global_step == full["trainer"].global_step == step + 6
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
