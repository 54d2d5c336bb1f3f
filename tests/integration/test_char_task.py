"""The converging character-level task (issue 25): the text-file datamodule, the FLOPs budget
that ends the learning-rate schedule, early stopping on valid bpc, and study FLOPs budgets."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from callbacks.token_budget import TokenBudget
from datamodules.text_file import TextFileDataModule
from experiments.study import StudyError, load_study
from experiments.train import train
from lhp.config_check import check_config
from lhp.errors import UserError
from lit_models.archs import make_config
from lit_models.optim import warmup_cosine
from tests.conftest import compose_config

TINY = ["experiment=char_shakespeare_tiny", "logger=csv"]  # the real file, from ../shared/data


def test_file_is_split_by_position_and_fully_evaluated(tmp_path):
    text = "".join(f"line {i}: to be or not to be\n" for i in range(200))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    dm = TextFileDataModule(str(path), split=[0.8, 0.1, 0.1], block_size=16, batch_size=4)
    parts = dm.split_texts()
    assert "".join(parts.values()) == text  # contiguous, in file order, nothing lost
    assert [len(p) for p in parts.values()][:2] == [round(0.8 * len(text)), round(0.1 * len(text))]
    dm.setup("fit")
    assert dm.val_tokens().numel() == len(parts["val"])  # every validation character is scored
    assert bytes(dm.train_tokens().tolist()).decode() == parts["train"]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"path": "missing.txt"}, "data.path: missing.txt does not exist"),
    ({"split": [0.9, 0.05]}, "data.split must be three positive fractions"),
    ({"split": [0.9, 0.2, 0.1]}, "summing to 1"),
    ({"block_size": 0}, "data.block_size must be a positive int"),
    ({"block_size": 512}, "the val part of"),
])
def test_bad_input_is_one_line(tmp_path, kwargs, expected):
    (tmp_path / "book.txt").write_text("abcdefgh" * 300, encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"ok\xff\xfe")
    args = {"path": str(tmp_path / "book.txt"), **kwargs}
    with pytest.raises(UserError) as err:
        TextFileDataModule(**args).setup("fit")
    assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"bad.txt is not UTF-8 text \(byte 2"):
        TextFileDataModule(str(tmp_path / "bad.txt")).setup("fit")


def _lr_and_flops(out: Path) -> tuple[list[float], list[float]]:
    rows = list(csv.DictReader(next(out.glob("csv/version_*/metrics.csv")).open()))
    lrs = [float(r["train/lr_decay"]) for r in rows if r.get("train/lr_decay")]
    flops = [float(r["train/flops"]) for r in rows if r.get("train/flops")]
    return lrs, flops


def test_flops_budget_ends_the_run_and_its_schedule(tmp_path):
    cfg = compose_config("train", [*TINY, "trainer.log_every_n_steps=1"], tmp_path / "run")
    metrics, objects = train(cfg)
    module, trainer = objects["model"], objects["trainer"]
    arch = make_config(cfg.model.arch, {**cfg.model.arch_config, "vocab_size": 258})
    per_token = arch.training_flops_per_token(32, 8 * 32)
    assert module.flops_per_token == pytest.approx(per_token)
    steps = math.ceil(1.0e9 / per_token / (8 * 32))
    assert trainer.global_step == steps  # stopped by the budget, not by max_steps (-1)
    assert module.training_flops >= 1.0e9 > module.training_flops - per_token * 8 * 32
    lrs, flops = _lr_and_flops(tmp_path / "run")
    # the warmup + cosine schedule was sized to the budget's steps (not to max_steps=-1)
    sched = cfg.model.scheduler
    assert lrs == pytest.approx([cfg.model.optimizer.lr * warmup_cosine(
        i, sched.warmup_steps, steps, sched.min_lr_ratio) for i in range(steps)])
    assert flops[-1] == pytest.approx(module.training_flops)
    hparams = next((tmp_path / "run").glob("csv/version_*/hparams.yaml")).read_text()
    assert f"model/flops_per_token: {per_token}" in hparams  # reported with the run's config
    assert {"val/bpc", "test/bpc"} <= set(metrics)


def test_early_stopping_on_valid_bpc(tmp_path):
    # min_delta no run can reach: every validation counts as no improvement
    cfg = compose_config("train", [*TINY, "callbacks.token_budget.max_flops=1e12",
                                   "callbacks.early_stopping.min_delta=100", "test=false"],
                         tmp_path / "run")
    _, objects = train(cfg)
    stopper = objects["trainer"].early_stopping_callback
    assert stopper.monitor == "val/bpc" and stopper.stopped_epoch >= 0
    # patience 2: the first validation sets the reference, two more without improvement stop
    assert objects["trainer"].global_step == 3 * 10


def test_study_flops_budget(tmp_path):
    study = load_study("char_shakespeare", ["budget.flops=2e12", f"output_dir={tmp_path}"])
    assert study.flops_budget == 2e12 and study.token_budget is None
    assert "callbacks.token_budget.max_flops=2e+12" in study.overrides("qtg", 1)
    both = load_study("char_shakespeare", ["budget.tokens=1000", f"output_dir={tmp_path}"])
    assert "callbacks.token_budget.max_tokens=1000" in both.overrides("gpt", 1)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["budget.flops=lots"], "key 'budget.flops': must be a positive number"),
    (["budget.flops=-1"], "key 'budget.flops': must be a positive number"),
    (["budget.watts=3"], "key 'budget': must be a mapping with 'tokens' and/or 'flops'"),
    (["budget.tokens=10", "token_budget=10"], "are the same budget: set one"),
    (["common=[callbacks.token_budget.max_flops=1]"], "use the study key 'budget.flops'"),
])
def test_study_budget_errors_name_the_key(overrides, expected):
    with pytest.raises(StudyError) as err:
        load_study("char_shakespeare", overrides)
    assert expected in str(err.value) and "char_shakespeare.yaml" in str(err.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("callbacks.token_budget.max_flops=-1", "callbacks.token_budget.max_flops"),
    ("callbacks.token_budget.max_flops=lots", "callbacks.token_budget.max_flops"),
    ("callbacks.token_budget.fit_schedule=3", "callbacks.token_budget.fit_schedule"),
])
def test_bad_budget_is_refused_before_any_work(tmp_path, override, expected):
    cfg = compose_config("train", [*TINY, override], tmp_path / "run")
    with pytest.raises(UserError) as err:
        check_config(cfg)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_budget_takes_the_smaller_of_tokens_and_flops():
    module = SimpleNamespace(flops_per_token=1.0e4, tokens_seen=0)
    both = TokenBudget(max_tokens=1000, max_flops=5.0e6, fit_schedule=True)
    both._tokens_per_step = 100
    assert both.token_limit(module) == 500 and both.schedule_steps(module) == 5
    assert TokenBudget(max_tokens=300, max_flops=5.0e6).token_limit(module) == 300
    assert TokenBudget(max_tokens=300).schedule_steps(module) is None  # fit_schedule off
    assert TokenBudget().token_limit(module) is None
    with pytest.raises(UserError, match="max_flops must be a positive number"):
        TokenBudget(max_flops=float("nan"))
