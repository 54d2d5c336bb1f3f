"""Other experiments on 2 CPU processes (slow; .ci/run runs them): the KD student under DDP
(one frozen teacher per rank, outside the checkpoint), QTG under FSDP with activation
checkpointing, the WikiText-2 GPT under DDP. Each finishes with the ranks consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.integration.test_distributed import train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("experiment", "overrides"), [
    ("qtg_wikitext2_tiny", ["trainer=fsdp", "model.arch_config.activation_checkpointing=true"]),
    ("gpt_wikitext2_tiny", ["trainer=ddp"]),
], ids=["qtg-fsdp-checkpointing", "gpt-ddp"])
def test_experiment_trains_on_two_processes(tmp_path: Path, experiment: str,
                                            overrides: list[str]) -> None:
    run_dir, out = train(tmp_path, experiment, *overrides, "trainer.max_steps=6",
                         "trainer.val_check_interval=6", experiment=experiment)
    assert "checks passed on 2 ranks" in out
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6


def test_kd_student_loads_one_teacher_per_rank_outside_the_checkpoint(
        tmp_path: Path, tiny_teacher: Path) -> None:
    run_dir, out = train(tmp_path, "kd", "trainer=ddp", f"model.teacher.path='{tiny_teacher}'",
                         "trainer.max_steps=6", "trainer.val_check_interval=6",
                         experiment="indra_kd_tiny")
    assert "checks passed on 2 ranks" in out  # the KD curriculum's state agreed on both ranks
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("teacher" in k for k in state)
