"""Launcher configs and the Slurm launcher's checks that need no cluster (tests/cluster/ has the
real jobs)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from experiments import CONFIG_DIR
from experiments.launch import check_slurm, launcher_kind
from lhp.errors import UserError
from tests.conftest import REPO

SLURM = {"partition": None, "timeout_min": 60, "signal_delay_s": 120}


def _compose(launcher: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)


def test_slurm_launcher_config_gives_usr1_to_submitit_and_allows_requeue() -> None:
    cfg = _compose("slurm")
    launcher = cfg.hydra.launcher
    assert launcher_kind(cfg) == "slurm"
    assert launcher.additional_parameters.signal == "USR1@120"
    assert launcher.additional_parameters.requeue is True
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in launcher.setup
    for key in ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "nodes",
                "tasks_per_node", "mem_gb", "signal_delay_s", "max_num_timeout"):
        assert key in launcher


def test_local_launcher_sets_threads_per_job() -> None:
    cfg = _compose("submitit_local")
    assert launcher_kind(cfg) == "submitit_local" and cfg.hydra.launcher.cpus_per_task == 1


@pytest.mark.parametrize(("launcher", "minutes", "names"), [
    ({**SLURM, "timeout_min": 2}, None, "hydra.launcher.timeout_min=2: the job would be signalled"),
    ({**SLURM, "timeout_min": 10}, 15.0, "callbacks.last_checkpoint.every_n_minutes=15"),
])
def test_time_limit_too_short_for_the_first_checkpoint(launcher, minutes, names) -> None:
    with pytest.raises(UserError, match=names):
        check_slurm(launcher, minutes)


def test_sbatch_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="hydra/launcher=slurm: `sbatch` not found on PATH"):
        check_slurm(SLURM, 15.0)


def test_cli_refuses_before_submitting_with_one_line(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "experiments.train", "-m", "hydra/launcher=slurm",
                          "experiment=smoke_tiny", f"hydra.sweep.dir={tmp_path}"], cwd=REPO,
                         env={"PATH": str(tmp_path), "WANDB_MODE": "offline"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm: `sbatch` not found on PATH: run on a Slurm login node (or "
        "start the local test cluster: scripts/local_slurm.sh start), or use "
        "hydra/launcher=submitit_local to run on this machine"]
