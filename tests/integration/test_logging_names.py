"""Metric names of the LR monitor and the TensorBoard logger, read back from real log files."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from callbacks.loggers import TensorBoardLogger
from callbacks.lr_monitor import LearningRateMonitor
from experiments.train import train
from experiments.utils import instantiate_group
from lhp.errors import UserError
from lit_models.optim import build_optimizer
from tests.conftest import compose_config

STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 3-step smoke_tiny run with the CSV and TensorBoard loggers, LR and momentum logged."""
    root = tmp_path_factory.mktemp("logging_names")
    out = root / "run"
    cfg = compose_config("train", [
        "experiment=smoke_tiny", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=2", "test=false", "logger=[csv,tensorboard]",
        "callbacks.lr_monitor.log_momentum=true"], out, data_dir=root / "data")
    train(cfg)
    with open(next(out.glob("csv/version_*/metrics.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"cfg": cfg, "rows": rows, "tb": next(out.glob("tensorboard/version_*"))}


def _series(rows: list[dict], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column)]


def test_one_lr_series_per_param_group(run: dict) -> None:
    rows = run["rows"]
    header = set(rows[0])
    assert {"train/lr_decay", "train/lr_no_decay", "train/momentum_decay",
            "train/momentum_no_decay"} <= header, sorted(header)
    assert not [c for c in header if c.startswith("lr-") or "/pg" in c], sorted(header)
    decay, no_decay = _series(rows, "train/lr_decay"), _series(rows, "train/lr_no_decay")
    assert len(decay) == len(no_decay) == STEPS
    assert decay == no_decay  # both groups follow the one schedule; only weight decay differs
    assert _series(rows, "train/momentum_decay") == [0.9] * STEPS  # AdamW's beta1


def test_tensorboard_hparams_tab_is_fed(run: dict) -> None:
    ea = EventAccumulator(str(run["tb"])).Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"train/lr_decay", "train/lr_no_decay", "val/loss"} <= scalars, sorted(scalars)
    assert "hp_metric" not in scalars  # no fake metric: the tab relates to the real val/loss

    content = ea.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/loss"]
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    cfg = run["cfg"]
    assert hparams["model/optimizer/lr"].number_value == pytest.approx(cfg.model.optimizer.lr)
    assert hparams["model/arch"].string_value == cfg.model.arch
    assert hparams["model/params/total"].number_value > 0
    assert hparams["git_commit"].WhichOneof("kind") == "string_value"
    assert "packages/torch" in hparams
    # flat: every value is a scalar or a string (lists such as tags become their repr)
    kinds = {k: v.WhichOneof("kind") for k, v in hparams.items()}
    assert set(kinds.values()) <= {"number_value", "string_value", "bool_value"}, kinds
    assert hparams["tags"].string_value.startswith("[")


def test_hparams_summary_written_once(run: dict) -> None:
    """The platform's full config is the run's only HParams session (Lightning's own later call,
    with the module's hyper-parameters, would otherwise shadow or duplicate it)."""
    tags = [value.tag for path in run["tb"].glob("events.out.tfevents.*")
            for event in EventFileLoader(str(path)).Load() for value in event.summary.value]
    assert tags.count("_hparams_/session_start_info") == 1
    assert tags.count("_hparams_/experiment") == 1


def test_tensorboard_without_package_is_a_user_error(make_cfg, monkeypatch) -> None:
    cfg = make_cfg(["logger=tensorboard"])
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # how Python marks a module missing
    with pytest.raises(UserError, match=r"pip install -e '\.\[tb\]'"):
        instantiate_group(cfg.logger, "logger")


def test_tensorboard_resume_continues_one_series(tmp_path: Path) -> None:
    """A resume from step 5 into the same run directory replaces the old steps >= 5."""
    first = TensorBoardLogger(tmp_path, version=0)
    for step in range(10):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.finalize("failed")
    time.sleep(1.1)  # events files are read in name order: <unix seconds>.<host>.<pid>.<counter>
    resumed = TensorBoardLogger(tmp_path, version=0)
    for step in range(5, 12):
        resumed.log_metrics({"train/loss": 100.0 + step}, step=step)
    resumed.finalize("success")
    assert len(list(Path(resumed.log_dir).glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(resumed.log_dir).Reload().Scalars("train/loss")
    assert [e.step for e in events] == list(range(12))
    assert [e.value for e in events] == [*map(float, range(5)), *(100.0 + s for s in range(5, 12))]


class _Tiny(L.LightningModule):
    def __init__(self, groups: str) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.groups = groups

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.net(batch).pow(2).mean()

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(8, 4), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.groups == "platform":
            return build_optimizer(self.net, lr=0.1, weight_decay=0.1, betas=(0.8, 0.99))
        if self.groups == "one":
            return torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.5)
        return torch.optim.SGD([{"params": [self.net.weight]}, {"params": [self.net.bias]}], lr=0.1)


@pytest.mark.parametrize(("groups", "expected"), [
    ("platform", {"train/lr_decay", "train/lr_no_decay", "train/momentum_decay"}),
    ("one", {"train/lr", "train/momentum"}),
    ("two_unnamed", {"train/lr_pg1", "train/lr_pg2"}),
])
def test_lr_monitor_names(tmp_path: Path, groups: str, expected: set[str]) -> None:
    trainer = L.Trainer(max_steps=2, logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=1,
                        callbacks=[LearningRateMonitor(log_momentum=True)],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(_Tiny(groups))
    header = next(tmp_path.glob("csv/version_*/metrics.csv")).read_text().splitlines()[0]
    names = {c for c in header.split(",") if c not in ("epoch", "step")}
    assert expected <= names, names
    assert not [c for c in names if c.startswith("lr-") or "-momentum" in c], names


def test_lr_monitor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="prefix"):
        LearningRateMonitor(prefix=None)  # type: ignore[arg-type]


def test_group_names_survive_an_old_optimizer_state() -> None:
    """A checkpoint written before the groups had names resumes with the names (and the state)."""
    net = torch.nn.Linear(4, 2)
    old = build_optimizer(net, lr=0.1, weight_decay=0.1, betas=(0.9, 0.95))
    net(torch.randn(3, 4)).sum().backward()
    old.step()
    state = old.state_dict()
    for group in state["param_groups"]:
        del group["name"]  # as written by the code before this change
    new = build_optimizer(net, lr=0.1, weight_decay=0.1, betas=(0.9, 0.95))
    new.load_state_dict(state)
    assert [g["name"] for g in new.param_groups] == ["decay", "no_decay"]
    assert torch.equal(new.state[net.weight]["exp_avg"], old.state[net.weight]["exp_avg"])
