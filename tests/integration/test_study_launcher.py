"""`lhp study --jobs N`: runs through Hydra's submitit_local launcher, N at a time; a finished run
is never lost, a failed one is reported and retried, a re-launch skips what is done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

STUDY = """\
name: launched
experiment: smoke_tiny
common: [logger=csv, test=false]
token_budget: 1280
seeds: [1]
variants:
  ok: []
  bad: [model.arch_config.n_head=3]   # n_head must divide n_embd=64: fails inside its job
"""


def _launch(file: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.study", str(file),
                           f"output_dir={out}", "--jobs", "2"], cwd=REPO, capture_output=True,
                          text=True, timeout=400, env={**__import__("os").environ,
                                                       "WANDB_MODE": "offline"})


def test_launched_study_keeps_finished_runs(tmp_path: Path) -> None:
    file, out = tmp_path / "launched.yaml", tmp_path / "out"
    file.write_text(STUDY, encoding="utf-8")
    first = _launch(file, out)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "via hydra/launcher=submitit_local, 2 at a time" in first.stdout
    done = out / "ok" / "seed1" / "result.json"
    assert done.is_file() and not (out / "ok" / "seed1" / "failed.txt").exists()
    failed = (out / "bad" / "seed1" / "failed.txt").read_text(encoding="utf-8")
    assert "hydra/launcher=submitit_local" in failed and "n_head" in failed
    assert "| ok |" in (out / "summary.md").read_text(encoding="utf-8")
    stamp = done.stat().st_mtime_ns

    second = _launch(file, out)
    assert second.returncode == 1
    assert "ok seed=1: skipping, done" in second.stdout
    assert "bad seed=1: running (retrying a failed run)" in second.stdout
    assert done.stat().st_mtime_ns == stamp
