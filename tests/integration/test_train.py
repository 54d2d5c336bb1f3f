"""End to end: train a tiny run, then evaluate, generate, resume and load its checkpoints."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.evaluate import evaluate
from experiments.generate import generate_text
from experiments.train import train
from lit_models.language_model import LanguageModel
from tests.conftest import REPO, compose_config

TINY = ["experiment=smoke_tiny"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 20-step smoke_tiny run shared by the tests of this module."""
    root = tmp_path_factory.mktemp("trained")
    cfg = compose_config("train", TINY, root / "run", data_dir=root / "data")
    metrics, objects = train(cfg)
    return {"cfg": cfg, "metrics": metrics, "out": root / "run", "root": root,
            "trainer": objects["trainer"]}


def test_run_leaves_wandb_csv_and_checkpoint(trained: dict) -> None:
    out: Path = trained["out"]
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    csv = next(out.glob("csv/version_*/metrics.csv"))
    header = csv.read_text().splitlines()[0].split(",")
    for column in ("train/loss", "train/loss_ce", "train/tokens_seen", "val/loss", "val/ppl",
                   "val/bpc", "throughput/train/device_tokens_per_sec", "baseline/bigram_val_loss"):
        assert column in header, f"{column} missing from {csv}"
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_metrics_are_consistent(trained: dict) -> None:
    m = trained["metrics"]
    assert math.exp(m["val/loss"]) == pytest.approx(m["val/ppl"], rel=1e-4)
    assert m["baseline/bigram_val_loss"] > 0
    # byte tokenizer on ASCII text: one character per token, bits = nats / ln 2
    assert m["val/bpc"] == pytest.approx(m["val/loss"] / math.log(2), rel=0.02)
    assert trained["trainer"].global_step == 20
    assert m["train/tokens_seen"] == 20 * 8 * 32


def test_checkpoint_loads_safely_and_without_hydra(trained: dict) -> None:
    path = trained["out"] / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["platform"]
    assert meta["tokenizer"] == {"kind": "byte"}
    assert meta["config"]["model"]["arch"] == "gpt" and meta["wandb_run_id"]
    module = LanguageModel.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert module.tokens_seen == 20 * 8 * 32
    assert module.hparams.arch_config["vocab_size"] == 258


def test_evaluate_reports_val_and_test(trained: dict, tmp_path: Path) -> None:
    ckpt = trained["out"] / "checkpoints" / "last.ckpt"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "trainer.limit_val_batches=4"], tmp_path / "eval",
                         data_dir=trained["root"] / "data")
    metrics, _ = evaluate(cfg)
    for key in ("val/loss", "val/ppl", "val/bpc", "test/loss", "test/ppl", "test/bpc"):
        assert math.isfinite(metrics[key]), key
    # the final training validation ran on the weights of last.ckpt
    assert metrics["val/loss"] == pytest.approx(trained["metrics"]["val/loss"], rel=1e-5)


def test_evaluate_merges_partial_data_overrides_onto_the_stored_config(trained: dict,
                                                                         tmp_path: Path) -> None:
    ckpt = trained["out"] / "checkpoints" / "last.ckpt"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "trainer.limit_val_batches=2",
                                  "trainer.limit_test_batches=2", "+data.batch_size=3"],
                         tmp_path / "eval", data_dir=trained["root"] / "data")
    metrics, objects = evaluate(cfg)
    datamodule = objects["datamodule"]
    assert datamodule.batch_size == 3  # the override
    assert datamodule.block_size == 32  # the rest from the checkpoint (smoke_tiny's block size)
    assert math.isfinite(metrics["test/loss"])


def test_generate_same_tokens_with_and_without_kv_cache(trained: dict, tmp_path: Path) -> None:
    ckpt = trained["out"] / "checkpoints" / "last.ckpt"
    texts = []
    for cache in ("true", "false"):
        cfg = compose_config("generate", [f"ckpt_path={ckpt}", "prompt=mary went to the",
                                          "max_new_tokens=40", "temperature=0",
                                          f"use_kv_cache={cache}"], tmp_path / cache)
        texts.append(generate_text(cfg)[0])
    assert texts[0] == texts[1]
    assert len(texts[0].encode()) > 0


def test_bad_checkpoint_gives_clear_error_and_is_left_alone(make_cfg, tmp_path: Path) -> None:
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    cfg = make_cfg(TINY + [f"ckpt_path={bad}"])
    with pytest.raises(ValueError, match="broken.ckpt"):
        train(cfg)
    assert bad.read_bytes() == b"not a checkpoint"


def test_missing_data_file_is_named(make_cfg, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    cfg = make_cfg(TINY + ["data.create_mock_data=false", f"data.data_files=[{missing}]"])
    with pytest.raises(ValueError, match="nowhere.jsonl"):
        train(cfg)


def _final_weights(objects: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in objects["model"].state_dict().items()}


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    """k steps, stop, resume to 2k == 2k uninterrupted (bitwise), across an epoch boundary."""
    common = TINY + [
        "data.batch_size=64", "data.block_size=32",  # ~23 batches per epoch: 2k crosses it
        "model.arch_config.dropout=0.1",              # RNG state matters
        "callbacks.model_checkpoint.every_n_train_steps=5", "trainer.val_check_interval=10",
        "test=false",  # testing reloads the best checkpoint; we compare the final weights
    ]
    data, logs = tmp_path / "data", tmp_path / "logs"
    run_root = logs / "train" / "smoke_tiny"

    def run(name: str, extra: list[str]) -> tuple[dict, dict]:
        cfg = compose_config("train", common + extra, run_root / name, data, log_dir=logs)
        return train(cfg)

    _, full = run("full", ["trainer.max_steps=30"])
    # Stop after k=15 steps with the token budget, so the LR schedule is the 30-step one.
    _, first = run("first", ["trainer.max_steps=30",
                             f"callbacks.token_budget.max_tokens={15 * 64 * 32}"])
    assert first["trainer"].global_step == 15
    ckpt = run_root / "first" / "checkpoints" / "last.ckpt"
    _, resumed = run("resumed", ["trainer.max_steps=30", f"ckpt_path={ckpt}"])
    assert resumed["trainer"].global_step == 30
    assert resumed["model"].tokens_seen == full["model"].tokens_seen
    a, b = _final_weights(full), _final_weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    # the resumed run continued the same W&B run
    assert resumed["loggers"][1].version == first["loggers"][1].version

    # resume=auto finds the newest last.ckpt of this run_name (the resumed run's, at step 30)
    _, auto = run("auto", ["trainer.max_steps=35", "resume=auto"])
    assert auto["trainer"].global_step == 35


def test_cli_entry_point(tmp_path: Path) -> None:
    """The real `python -m experiments.train` path: Hydra app, config printing, exit code."""
    cmd = [sys.executable, "-m", "experiments.train", "experiment=smoke_tiny", "trainer.max_steps=3",
           f"hydra.run.dir={tmp_path / 'cli'}", f"paths.data_dir={tmp_path / 'data'}",
           "logger=csv", "test=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bigram baseline" in (proc.stdout + proc.stderr).lower()
    assert (tmp_path / "cli" / "config_tree.log").is_file()


def test_failed_sweep_trial_does_not_kill_the_sweep(tmp_path: Path) -> None:
    """A trial with an invalid config (n_head=3 does not divide 64) scores worst; the next runs."""
    cmd = [sys.executable, "-m", "experiments.train", "-m", "experiment=smoke_tiny",
           "model.arch_config.n_head=3,4", "trainer.max_steps=2", "logger=csv", "test=false",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worst-case score" in proc.stdout + proc.stderr
    assert list((tmp_path / "sweep" / "1").glob("checkpoints/last.ckpt")), "second trial did not run"


def test_bpe_mixed_checkpoint_evaluates_and_generates(tmp_path: Path) -> None:
    """The BPE tokenizer travels inside the checkpoint; per-corpus metrics come back."""
    data = tmp_path / "data"
    cfg = compose_config("train", ["experiment=gpt_wikitext_alpaca_tiny", "trainer.max_steps=4",
                                   "test=false", "logger=csv"], tmp_path / "run", data)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["platform"]["tokenizer"]["kind"] == "bpe"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "logger=csv"], tmp_path / "eval", data)
    metrics, _ = evaluate(cfg)
    for key in ("val/loss", "val/wiki_loss", "val/wiki_word_ppl", "val/wiki_bpc",
                "val/alpaca_loss", "test/wiki_word_ppl", "test/alpaca_ppl"):
        assert math.isfinite(metrics[key]), key
    assert metrics["val/loss"] == pytest.approx(
        (metrics["val/wiki_loss"] + metrics["val/alpaca_loss"]) / 2, rel=1e-5)
    cfg = compose_config("generate", [f"ckpt_path={ckpt}", "prompt=The castle", "temperature=0",
                                      "max_new_tokens=8"], tmp_path / "gen")
    assert isinstance(generate_text(cfg)[0], str)


def test_optuna_sweep_is_stored_in_sqlite_and_resumes(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [sys.executable, "-m", "experiments.train", "-m", "hparams_search=gpt_optuna",
           "experiment=gpt_wikitext2_tiny", "hydra.sweeper.n_trials=1", "trainer.max_steps=5",
           f"hydra.sweeper.storage={storage}", "logger=csv", "extras.print_config=false",
           f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}"]
    for _ in range(2):  # the second launch continues the same study
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="gpt_optuna_gpt_wikitext2_tiny", storage=storage)
    values = [t.value for t in study.trials]
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
