"""Cluster tests: real Slurm jobs on the local single-node cluster (scripts/local_slurm.sh).

Not up: skipped on a developer's machine, FAILED under CI=true (CI starts the cluster first).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "LHP_PYTHON": PY}
ENV.pop("HYDRA_FULL_ERROR", None)
# a tiny training that every test shares: 2-layer GPT on a mock corpus, CSV metrics only
TINY = ["experiment=smoke_tiny", "logger=csv", "test=false"]


def _cluster_up() -> str | None:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo: {err}"
    state = out.stdout.strip()
    if out.returncode != 0 or state not in ("idle", "mixed", "allocated"):
        return f"sinfo: rc={out.returncode} state={state!r} {out.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    problem = _cluster_up()
    if problem is None:
        return
    message = f"local Slurm cluster not up ({problem}): run scripts/local_slurm.sh start"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list[str], timeout: float = 400, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=kw.pop("env", ENV), capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)


def wait_job(job: str, timeout: float = 400) -> None:
    """Until Slurm no longer lists the job (finished, failed or cancelled)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True,
                             check=False)
        if not out.stdout.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", job], check=False)
    raise AssertionError(f"Slurm job {job} still listed after {timeout}s")


def final_metrics(run_dir: Path) -> dict[str, float]:
    from analysis.runs import load_series

    return {k: float(v[-1]) for k, (_, v) in load_series(run_dir, []).items()
            if k.startswith("val/") and len(v)}
