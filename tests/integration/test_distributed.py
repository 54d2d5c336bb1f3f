"""Multi-process training on CPU (gloo, 2 processes): DDP and FSDP2, resume, metrics, loading.

Each run is a real ``python -m experiments.train`` (Lightning relaunches the script per rank).
The DDP runs: 20 uninterrupted steps; 10 steps stopped by the token budget (same schedule) and
resumed to 20, bitwise equal; the same checkpoint resumed by one process. FSDP: 10 + 10 resumed,
against the DDP weights (reductions differ in order, so within fp tolerance).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, compose_config

STEPS, HALF, GLOBAL_BATCH, BLOCK = 20, 10, 16, 32  # smoke_tiny: batch 8 per rank, block 32
TIMEOUT_S = 300


def train(root: Path, run_name: str, *overrides: str, experiment: str = "smoke_tiny"
          ) -> tuple[Path, str]:
    """Run one training; return its run directory and output (fails the test with the output)."""
    cmd = [sys.executable, "-m", "experiments.train", f"experiment={experiment}", "logger=csv",
           f"run_name={run_name}", f"paths.log_dir={root / 'logs'}",
           f"paths.data_dir={root / 'data'}", "extras.print_config=false", "test=false",
           "trainer.limit_val_batches=null", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd[3:])} failed:\n{out[-4000:]}"
    [run_dir] = (root / "logs" / "train" / run_name).glob("*/seed*")
    return run_dir, out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def budget(steps: int) -> str:
    """Stop after ``steps`` steps of the 20-step schedule (the LR schedule is unchanged)."""
    return f"callbacks.token_budget.max_tokens={steps * GLOBAL_BATCH * BLOCK}"


def val_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    [metrics] = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        return [row for row in csv.DictReader(f) if row.get("val/loss")]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("ddp")
    runs = {"full": train(root, "full", "trainer=ddp"),
            "half": train(root, "half", "trainer=ddp", budget(HALF))}
    half_ckpt = runs["half"][0] / "checkpoints" / "last.ckpt"
    runs["resumed"] = train(root, "resumed", "trainer=ddp", f"ckpt_path='{half_ckpt}'")
    runs["single"] = train(root, "single", "trainer=cpu", f"ckpt_path='{half_ckpt}'",
                           "trainer.max_steps=14")
    runs["root"] = (root, "")
    return runs


def test_ddp_resume_at_world_size_2_is_bitwise(ddp: dict) -> None:
    full, resumed = weights(ddp["full"][0]), weights(ddp["resumed"][0])
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    ckpt = torch.load(ddp["full"][0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS
    assert ckpt["tokens_seen"] == STEPS * GLOBAL_BATCH * BLOCK  # the global count, every rank


def test_ranks_stay_consistent_and_log_once(ddp: dict) -> None:
    run_dir, out = ddp["full"]
    assert "rank consistency: 3 checks passed on 2 ranks" in out  # 2 validations + fit end
    steps = [row["step"] for row in val_rows(run_dir)]
    assert len(steps) == len(set(steps)) == 2  # one row per validation: rank zero logs alone
    assert out.count("Final metrics:") == 1


def test_single_process_resumes_a_two_process_checkpoint(ddp: dict) -> None:
    ckpt = torch.load(ddp["single"][0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 14
    # 10 steps x 16 sequences on 2 ranks, then 4 steps x 8 on one
    assert ckpt["tokens_seen"] == (HALF * GLOBAL_BATCH + 4 * GLOBAL_BATCH // 2) * BLOCK


def test_distributed_validation_equals_single_process_evaluation(ddp: dict) -> None:
    """The 2-rank validation (padding ignored, torchmetrics sync) = one process on the same set."""
    from experiments.evaluate import evaluate

    run_dir = ddp["full"][0]
    root = ddp["root"][0]
    cfg = compose_config("eval", [f"ckpt_path='{run_dir / 'checkpoints' / 'last.ckpt'}'",
                                  "logger=csv"], root / "eval", root / "data")
    metrics, _ = evaluate(cfg)
    last = val_rows(run_dir)[-1]
    for key in ("val/loss", "val/ppl", "val/bpc"):
        assert metrics[key] == pytest.approx(float(last[key]), rel=1e-5), key


def test_fsdp_trains_resumes_and_saves_full_checkpoints(ddp: dict, tmp_path: Path) -> None:
    from lit_models.checkpoints import load_net

    root = ddp["root"][0]
    half, out = train(root, "fsdp_half", "trainer=fsdp", budget(HALF))
    assert "rank consistency: 2 checks passed on 2 ranks" in out
    half_ckpt = half / "checkpoints" / "last.ckpt"
    resumed, _ = train(root, "fsdp_resumed", "trainer=fsdp", f"ckpt_path='{half_ckpt}'")
    ddp_w, fsdp_w = weights(ddp["full"][0]), weights(resumed)
    assert ddp_w.keys() == fsdp_w.keys()
    for k in ddp_w:  # same training as DDP; only the order of the gradient reductions differs
        torch.testing.assert_close(fsdp_w[k], ddp_w[k], rtol=1e-4, atol=1e-5, msg=k)
    net, _ = load_net(resumed / "checkpoints" / "last.ckpt", "tokens", "test")  # one process
    assert sum(p.numel() for p in net.parameters()) > 0


def test_fsdp_refuses_an_architecture_without_a_block_class() -> None:
    from lhp.errors import UserError
    from lit_models.archs import registry
    from lit_models.strategies import shard_network

    with pytest.raises(UserError, match="names no block class to shard"):
        shard_network(torch.nn.Linear(2, 2), "fractal", mesh=None)
    assert registry.shard_unit("gpt") is not None


def test_too_many_devices_is_one_clear_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "experiments.train", "experiment=smoke_tiny", "trainer=ddp",
           "trainer.devices=512", "logger=csv", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: trainer.devices=512"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_sharded_checkpoint_directory_is_refused_in_one_process(tmp_path: Path) -> None:
    from lhp.errors import UserError
    from lit_models.checkpoints import load_checkpoint

    shards = tmp_path / "last.ckpt"  # what save_distributed_checkpoint=true writes: a directory
    shards.mkdir()
    torch.save({"global_step": 3}, shards / "meta.pt")
    with pytest.raises(UserError, match="is a sharded directory .* resume it with trainer=fsdp"):
        load_checkpoint(shards)
    assert load_checkpoint(shards, sharded=True)["global_step"] == 3  # a multi-process resume
