"""Data-loading cost: training steps/s fed by the real datamodule vs by pre-materialized tensors.

    lhp bench dataloader [--steps 30] [--warmup 5] [--rounds 2] [--out report.json] [-- overrides]

Same model, optimizer and batches on both sides, alternated in one process (default
``experiment=gpt_wikitext2``). The last line is the ratio; the goal is data loading < 5% of step
time, i.e. ratio >= 0.95.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from itertools import islice

import torch

from experiments.bench import common
from experiments.utils import compose_config
from lhp.errors import entry_point
from lit_models.archs import build_arch
from lit_models.optim import build_optimizer

COLUMNS = [("round", "round", "d"), ("real", "real datamodule steps/s", ".3f"),
           ("pre", "pre-materialized steps/s", ".3f")]


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
        common.bare_step(net, opt, batch)
    return steps / (time.perf_counter() - t0)


@entry_point
def main(argv: list[str] | None = None) -> float:
    parser = common.bench_parser(__doc__.splitlines()[0], overrides=True, steps=(30, 5, 2))
    args = common.parse_args(parser, argv)
    overrides = args.overrides or ["experiment=gpt_wikitext2"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("train", overrides, tmp)
    dm = common.fit_datamodule(cfg)
    torch.manual_seed(0)
    net = build_arch(cfg.model.arch, {**cfg.model.arch_config, "vocab_size": dm.vocab_size})
    opt = build_optimizer(net, **cfg.model.optimizer)
    n = args.warmup + args.steps
    tensors = list(islice(_endless(dm.train_dataloader()), n))  # materialized up front
    rows = []
    for r in common.progress(range(args.rounds), "dataloader rounds"):
        sides = [("real", lambda: _endless(dm.train_dataloader())), ("pre", lambda: iter(tensors))]
        row = {"round": r}
        for name, make in sides if r % 2 == 0 else sides[::-1]:
            row[name] = steps_per_sec(net, opt, make(), args.steps, args.warmup)
        rows.append(row)
    fetch = time.perf_counter()
    for _ in islice(_endless(dm.train_dataloader()), n):
        pass
    per_batch_ms = (time.perf_counter() - fetch) / n * 1e3
    r_med, p_med = (statistics.median(row[k] for row in rows) for k in ("real", "pre"))
    ratio = r_med / p_med
    print(f"{' '.join(overrides)}: batch {dm.batch_size} x {dm.block_size}; fetching one batch alone "
          f"takes {per_batch_ms:.2f} ms, a training step {1e3 / p_med:.0f} ms")
    headline = (f"real/pre-materialized steps/s = {ratio:.3f} "
                f"(data loading = {100 * (1 - ratio):.1f}% of step time)")
    common.report(rows, headline, args.out, columns=COLUMNS, meta={"ratio": ratio})
    return ratio


if __name__ == "__main__":
    main()
