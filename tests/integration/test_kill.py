"""SIGKILL at seeded random moments (one inside a checkpoint write), resume=auto until done."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.kill import kill_add_book, kill_and_resume

EVERY = 5


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "kills"), [([], 3), (["+plugins=sqlite_checkpoint"], 1)],
                         ids=["torch-save", "sqlite-plugin"])
def test_killed_training_resumes_to_the_same_weights(tmp_path: Path, extra: list[str],
                                                     kills: int) -> None:
    report = kill_and_resume(tmp_path, kills=kills, every=EVERY, extra=extra)
    print(report.line(" ".join(extra) or "torch.save"))
    assert report.kills == kills and report.during_write == 1
    assert not report.corrupt
    assert max(report.redone) <= EVERY
    assert report.final_step == 40 and report.bitwise_equal
    assert not report.stale_temp_files


@pytest.mark.slow
def test_killed_add_book_leaves_a_consistent_library(tmp_path: Path) -> None:
    result = kill_add_book(tmp_path, kills=1)
    assert result["kills"] == 1
    assert not result["problems"] and not result["temp_files"]
    assert result["books"] >= 1
