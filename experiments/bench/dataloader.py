"""Data-loading cost: training steps/s fed by the real datamodule vs by pre-materialized tensors.

    python -m experiments.bench.dataloader [--steps 30] [--warmup 5] [-- overrides]

Same model, optimizer and batches on both sides, alternated in one process (default
``experiment=gpt_wikitext2``). The last line is the ratio; the goal is data loading < 5% of step
time, i.e. ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from itertools import islice

import hydra
import torch
import torch.nn.functional as F

from experiments.utils import compose_config
from lit_models.archs import build_arch
from lit_models.optim import build_optimizer


def _endless(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def steps_per_sec(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterator,
                  steps: int, warmup: int) -> float:
    """Run ``warmup + steps`` optimizer steps; time the last ``steps`` (data fetch included)."""
    t0 = 0.0
    for i, batch in enumerate(islice(batches, warmup + steps)):
        if i == warmup:
            t0 = time.perf_counter()
        logits, _ = net(batch["input_ids"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", default=["experiment=gpt_wikitext2"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("train", list(args.overrides), tmp)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    net = build_arch(cfg.model.arch, {**cfg.model.arch_config, "vocab_size": dm.vocab_size})
    opt = build_optimizer(net, **cfg.model.optimizer)
    n = args.warmup + args.steps
    tensors = list(islice(_endless(dm.train_dataloader()), n))  # materialized up front
    real, pre = [], []
    for r in range(args.rounds):
        sides = [("real", lambda: _endless(dm.train_dataloader())), ("pre", lambda: iter(tensors))]
        for name, make in sides if r % 2 == 0 else sides[::-1]:
            rate = steps_per_sec(net, opt, make(), args.steps, args.warmup)
            (real if name == "real" else pre).append(rate)
        print(f"round {r}: real datamodule {real[-1]:.3f} steps/s, pre-materialized {pre[-1]:.3f} steps/s")
    fetch = time.perf_counter()
    for _ in islice(_endless(dm.train_dataloader()), n):
        pass
    per_batch_ms = (time.perf_counter() - fetch) / n * 1e3
    r_med, p_med = statistics.median(real), statistics.median(pre)
    print(f"{' '.join(args.overrides)}: batch {dm.batch_size} x {dm.block_size}; "
          f"fetching one batch alone takes {per_batch_ms:.2f} ms, a training step {1e3 / p_med:.0f} ms")
    print(f"real/pre-materialized steps/s = {r_med / p_med:.3f} "
          f"(data loading = {100 * (1 - r_med / p_med):.1f}% of step time)")


if __name__ == "__main__":
    main()
