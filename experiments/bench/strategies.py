"""Training throughput of one model under 1 process, DDP x2 and FSDP x2 at the same global batch.

    lhp bench strategies [--steps 40] [--warmup 10] [--rounds 2] [--out report.json] [--quick]

Each side is a real ``python -m experiments.train`` run (Lightning launches the ranks) of
``experiment=smoke`` (a 0.8M-param GPT, block 128) with a global batch of 32 sequences: one
process with batch 32, or 2 processes with 16 each. Only steps after ``--warmup`` are timed
(``common.StepTimer``). Lightning gives each CPU rank ``cores / ranks`` threads, so on 2 cores
the sides use the same cores: expect no gain there. The ratios to one process are the last line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from experiments import REPO_ROOT
from experiments.bench import common
from lhp.errors import UserError, entry_point

SIDES = {"1 process": ("trainer=cpu", 1), "DDP x2": ("trainer=ddp", 2), "FSDP x2": ("trainer=fsdp", 2)}
GLOBAL_BATCH = 32


def measure(trainer: str, ranks: int, steps: int, warmup: int, out: Path, experiment: str = "smoke",
            global_batch: int = GLOBAL_BATCH, extra: tuple[str, ...] = ()) -> float:
    """Tokens/s (all ranks) of one timed training run in its own processes."""
    result = out / f"{trainer.split('=')[1]}_{ranks}_{uuid.uuid4().hex[:8]}.json"  # one per run
    cmd = [sys.executable, "-m", "experiments.train", f"experiment={experiment}", trainer,
           f"trainer.max_steps={steps + warmup}", f"data.batch_size={global_batch // ranks}",
           "logger=csv", f"run_name=bench_{result.stem}", f"paths.log_dir={out / 'logs'}",
           *common.TIMING_OVERRIDES, "callbacks.bigram_baseline=null",
           f"+callbacks.step_timer._target_={common.StepTimer.__module__}.StepTimer",
           f"+callbacks.step_timer.warmup={warmup}", f"+callbacks.step_timer.out='{result}'",
           *([f"trainer.devices={ranks}"] if ranks > 1 else []), *extra]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # Lightning sets it per rank
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env={**env, "WANDB_MODE": "offline"},
                          capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserError(f"bench strategies: the {trainer} run failed: " + " | ".join(tail))
    return json.loads(result.read_text())["tokens_per_s"]


def gpu_checks(device: torch.device, tiny: bool) -> Iterator[tuple[str, float, str]]:
    """For the GPU suite: tokens/s of 1 GPU, DDP and FSDP over every GPU (needs more than one);
    with ``tiny`` on CPU, one short single-process run so the path cannot rot."""
    with tempfile.TemporaryDirectory() as tmp:
        if tiny:
            yield ("strategies 1 process (tiny)", measure("trainer=cpu", 1, 3, 2, Path(tmp),
                                                          "smoke_tiny", 8), "tokens/s")
            return
        n = torch.cuda.device_count()
        if n < 2:
            yield ("strategies DDP/FSDP", float("nan"), f"skipped: {n} GPU")
            return
        gpu = ("trainer.accelerator=gpu", "trainer.precision=bf16-mixed")
        base = measure("trainer=gpu", 1, 40, 10, Path(tmp), "smoke", 32 * n, gpu)
        yield ("strategies 1 GPU", base, "tokens/s")
        for trainer in ("trainer=ddp", "trainer=fsdp"):
            rate = measure(trainer, n, 40, 10, Path(tmp), "smoke", 32 * n, gpu)
            yield (f"strategies {trainer.split('=')[1]} x{n} / 1 GPU", rate / base, "x")


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = common.bench_parser(__doc__, steps=(40, 10, 2))
    parser.add_argument("--quick", action="store_true", help="3 timed steps of smoke_tiny (CI)")
    args = common.parse_args(parser, argv)
    experiment, steps, warmup = ("smoke_tiny", 3, 2) if args.quick else ("smoke", args.steps, args.warmup)
    batch = 8 if args.quick else GLOBAL_BATCH
    rates: dict[str, list[float]] = {name: [] for name in SIDES}
    order = list(SIDES.items())
    with tempfile.TemporaryDirectory() as tmp:
        for r in common.progress(range(args.rounds), "strategies rounds", args.rounds):
            for name, (trainer, ranks) in order if r % 2 == 0 else order[::-1]:  # alternate: load drifts
                rates[name].append(measure(trainer, ranks, steps, warmup, Path(tmp), experiment, batch))
    rows = [{"side": name, "processes": ranks, "batch_per_rank": batch // ranks,
             "tokens_per_s": statistics.median(rates[name])} for name, (_, ranks) in SIDES.items()]
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_1_process"] = row["tokens_per_s"] / base
    cores = len(os.sched_getaffinity(0))
    headline = (f"strategies ({experiment}, global batch {batch}, {steps} timed steps, median of "
                f"{args.rounds} alternated rounds, {cores} cores): "
                + ", ".join(f"{r['side']} {r['vs_1_process']:.2f}x" for r in rows[1:])
                + f" of 1 process ({base:,.0f} tokens/s)")
    common.report(rows, headline, args.out, columns=[
        ("side", "side", ""), ("processes", "processes", "d"), ("batch_per_rank", "batch/rank", "d"),
        ("tokens_per_s", "tokens/s", ",.0f"), ("vs_1_process", "vs 1 process", ".2f")],
        meta={"experiment": experiment, "steps": steps, "warmup": warmup, "cores": cores})


if __name__ == "__main__":
    main()
