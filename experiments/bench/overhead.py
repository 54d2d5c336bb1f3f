"""Platform overhead: the same GPT, data and steps through the platform's Trainer and through a
minimal hand-written PyTorch loop, alternated in one process; the ratio is the last line.

    lhp bench overhead [--steps 150] [--warmup 20] [--rounds 4] [--out report.json] [-- overrides]

The platform run is the real one (``experiments.train.train`` with W&B offline + CSV loggers,
checkpointing, LR monitor, throughput monitor, progress bar); validation/test are switched off
so both sides do the same work. Only steps after ``--warmup`` are timed on both sides.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from omegaconf import open_dict

from experiments.bench import common
from experiments.utils import compose_config
from lhp.errors import entry_point
from lit_models.archs import build_arch
from lit_models.optim import build_optimizer, warmup_cosine


def compose_cfg(out: Path, steps: int, overrides: list[str]):
    return compose_config("train", ["experiment=smoke", f"trainer.max_steps={steps}", *common.TIMING_OVERRIDES,
                                    f"paths.log_dir={out}/logs", *overrides], out)


def platform_run(cfg, warmup: int) -> float:
    """Train through the platform with a common.StepTimer added as one more configured callback."""
    with open_dict(cfg):
        cfg.callbacks.step_timer = {"_target_": f"{common.StepTimer.__module__}.StepTimer", "warmup": warmup}
    _, objects = common.train_config(cfg)
    timer = next(c for c in objects["callbacks"] if isinstance(c, common.StepTimer))
    return timer.tokens / (timer.t1 - timer.t0)


def bare_run(cfg, datamodule, steps: int, warmup: int) -> float:
    """The minimal loop: forward, CE, backward, clip, AdamW step, LR schedule step."""
    L.seed_everything(cfg.seed)
    m = cfg.model
    net = build_arch(m.arch, {**m.arch_config, "vocab_size": datamodule.vocab_size})
    opt = build_optimizer(net, **m.optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, m.scheduler.warmup_steps, steps, m.scheduler.min_lr_ratio))
    net.train()
    step, tokens, t0 = 0, 0, 0.0
    while step < steps:
        for batch in datamodule.train_dataloader():
            if step == warmup:
                t0 = time.perf_counter()
            common.bare_step(net, opt, batch, cfg.trainer.gradient_clip_val)
            sched.step()
            step += 1
            if step > warmup:
                tokens += batch["input_ids"].numel()
            if step == steps:
                break
    return tokens / (time.perf_counter() - t0)


@entry_point
def main(argv: list[str] | None = None) -> float:
    parser = common.bench_parser(__doc__.splitlines()[0], overrides=True, steps=(150, 20, 4))
    args = common.parse_args(parser, argv)
    steps = args.steps + args.warmup
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in common.progress(range(args.rounds), "overhead rounds"):
            cfg = compose_cfg(Path(tmp) / f"platform{r}", steps, args.overrides)
            dm = common.fit_datamodule(cfg)
            # Alternate which side goes first, so neither profits from running second.
            sides = [("platform", partial(platform_run, cfg, args.warmup)),
                     ("bare", partial(bare_run, cfg, dm, steps, args.warmup))]
            row = {"round": r}
            for name, run in sides if r % 2 == 0 else sides[::-1]:
                row[name] = run()
            rows.append(row)
    p, b = (statistics.median(row[k] for row in rows) for k in ("platform", "bare"))
    common.report(rows, f"platform {p:,.0f} tokens/s | bare loop {b:,.0f} tokens/s | platform/bare = {p / b:.3f}",
                  args.out, columns=[("round", "round", "d"), ("platform", "platform tokens/s", ",.0f"),
                                     ("bare", "bare loop tokens/s", ",.0f")],
                  notes=[f"threads={torch.get_num_threads()} steps={args.steps} (after {args.warmup} "
                         f"warm-up) rounds={args.rounds}"], meta={"ratio": p / b})
    return p / b


if __name__ == "__main__":
    main()
