"""Integration fixtures: a tiny distillation teacher trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_config


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """last.ckpt of a 12-step ``indra_teacher_tiny`` run (a GPT on the fixture WikiText + Alpaca
    mix, the tiny students' tokenizer), for ``experiment=indra_kd_tiny``."""
    from experiments.train import train

    out = tmp_path_factory.mktemp("indra_teacher") / "run"
    cfg = compose_config("train", ["experiment=indra_teacher_tiny", "trainer.max_steps=12",
                                   "test=false", "logger=csv"], out, data_dir)
    train(cfg)
    return out / "checkpoints" / "last.ckpt"
