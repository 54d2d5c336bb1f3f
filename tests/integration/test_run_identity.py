"""Run identity: names, groups and tags dashboards can group by; the config once in W&B; one
directory per run that a resume continues; and a resume that refuses another run's config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.train import train
from lhp.errors import UserError
from lhp.identity import config_differences, run_label, run_slug
from tests.conftest import compose_config
from tests.wandb_records import summarize

TINY = ["experiment=smoke_tiny", "test=false", "trainer.max_steps=10", "trainer.val_check_interval=5"]


def test_names_leave_out_execution_only_keys() -> None:
    overrides = ["experiment=smoke", "model.optimizer.lr=5e-3", "trainer.max_steps=99",
                 "logger=csv", "+model.arch_config.n_layer=4", "seed=3", "resume=auto"]
    assert run_label("smoke", overrides) == "smoke lr=5e-3 n_layer=4"
    assert run_slug(overrides, 3) == "lr=5e-3,n_layer=4/seed3"
    assert run_slug(["trainer.max_steps=5"], 1) == "default/seed1"
    # the same last key in two places is told apart
    assert run_label("x", ["model.optimizer.lr=1", "data.lr=2"]) == "x data.lr=2 optimizer.lr=1"


def test_config_differences_ignore_execution_keys_and_derived_fills() -> None:
    stored = {"trainer": {"max_steps": 10}, "model": {"optimizer": {"lr": 1e-3},
                                                      "arch_config": {"vocab_size": 258}}}
    asked = {"trainer": {"max_steps": 20}, "model": {"optimizer": {"lr": 5e-3},
                                                     "arch_config": {"vocab_size": None}}}
    assert config_differences(stored, asked) == [("model.optimizer.lr", 1e-3, 5e-3)]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("identity")
    out = {}
    for lr in ("1e-3", "5e-3"):
        cfg = compose_config("train", TINY + [f"model.optimizer.lr={lr}"], root / lr, root / "data")
        train(cfg)
        out[lr] = summarize(root / lr)
    return out


def test_runs_differing_in_lr_get_different_names_and_the_same_group(two_runs: dict) -> None:
    a, b = two_runs["1e-3"]["run"], two_runs["5e-3"]["run"]
    assert a.display_name == "smoke_tiny lr=1e-3" and b.display_name == "smoke_tiny lr=5e-3"
    assert a.run_group == b.run_group == "smoke_tiny"
    assert a.job_type == "train"
    assert "lr=5e-3" in b.tags and "seed:1234" in b.tags and any(t.startswith("git:") for t in b.tags)


def test_config_reaches_wandb_once_as_one_tree(two_runs: dict) -> None:
    run = two_runs["5e-3"]
    keys = run["config_keys"]
    assert len(keys) == len(set(keys))
    for duplicate in ("optimizer", "arch", "arch_config", "loss_weights"):  # module hparams
        assert duplicate not in keys
    assert json.loads(run["config"]["model"])["optimizer"]["lr"] == 5e-3
    for derived in ("model/params/total", "data/tokens_per_step", "data/tokenizer", "git_commit"):
        assert derived in keys
    summary = run["summary"]
    assert float(summary["val/loss_best"]) <= float(summary["val/loss_final"])


def _csv_steps(run_dir: Path) -> list[int]:
    files = list(run_dir.glob("csv/*/metrics.csv"))
    assert len(files) == 1, files
    with open(files[0], newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")]


def test_resume_continues_the_same_directory_and_csv_history(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    train(compose_config("train", TINY + ["logger=csv"], out, data))
    with pytest.raises(UserError, match="already holds this run"):  # resume=null never overwrites
        train(compose_config("train", TINY + ["logger=csv"], out, data))
    _, objects = train(compose_config("train", TINY + ["logger=csv", "resume=auto",
                                                       "trainer.max_steps=20"], out, data))
    assert objects["trainer"].global_step == 20
    steps = _csv_steps(out)
    assert steps == sorted(set(steps)) and steps[-1] >= 18  # one unbroken, increasing history


def test_resume_refuses_a_checkpoint_with_another_config_listing_each_key(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    train(compose_config("train", TINY + ["logger=csv"], out, data))
    changed = TINY + ["logger=csv", "resume=auto", "model.optimizer.weight_decay=0.01",
                      "model.scheduler.warmup_steps=3"]
    with pytest.raises(UserError) as err:
        train(compose_config("train", changed, out, data))
    message = str(err.value)
    assert "model.optimizer.weight_decay: checkpoint 0.1 vs now 0.01" in message
    assert "model.scheduler.warmup_steps" in message
    _, objects = train(compose_config("train", [*changed, "resume=force", "trainer.max_steps=12"],
                                      out, data))
    assert objects["trainer"].global_step == 12


def test_resume_auto_skips_another_identitys_run(tmp_path: Path, caplog) -> None:
    data, logs = tmp_path / "data", tmp_path / "logs"
    root = logs / "train" / "smoke_tiny"
    train(compose_config("train", TINY + ["logger=csv"], root / "a", data, log_dir=logs))
    cfg = compose_config("train", TINY + ["logger=csv", "resume=auto", "model.optimizer.lr=9e-3"],
                         root / "b", data, log_dir=logs)
    with caplog.at_level("INFO"):
        _, objects = train(cfg)
    assert "starting fresh" in caplog.text and objects["trainer"].global_step == 10


def test_tags_fit_wandb_limits() -> None:
    from lhp.identity import run_tags

    tags = run_tags(["x"], [f"data.books=[{'/very/long/path' * 10}]"], 1, "abc1234def-dirty")
    assert all(1 <= len(t) <= 64 for t in tags) and "dirty" in tags and "git:abc1234" in tags
