"""Platform overhead: the same GPT, data and steps through the platform's Trainer and through a
minimal hand-written PyTorch loop, alternated in one process; the ratio is the last line.

    python -m experiments.bench.overhead [--steps 150] [--warmup 20] [--rounds 4] [-- overrides]

The platform run is the real one (``experiments.train.train`` with W&B offline + CSV loggers,
checkpointing, LR monitor, throughput monitor, progress bar); validation/test are switched off
so both sides do the same work. Only steps after ``--warmup`` are timed on both sides.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from experiments.train import train
from experiments.utils import compose_config
from lit_models.archs import build_arch
from lit_models.optim import build_optimizer, warmup_cosine


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.tokens = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.tokens += batch["input_ids"].numel()
            self.t1 = time.perf_counter()


def compose_cfg(out: Path, steps: int, overrides: list[str]):
    return compose_config("train", [
        "experiment=smoke", f"trainer.max_steps={steps}", "trainer.max_time=null",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test=false",
        "extras.print_config=false", f"paths.log_dir={out}/logs", *overrides,
    ], out)


def platform_run(cfg, warmup: int) -> float:
    """Train through the platform with a StepTimer added as one more configured callback."""
    with open_dict(cfg):
        cfg.callbacks.step_timer = {"_target_": f"{__name__}.StepTimer", "warmup": warmup}
    _, objects = train(cfg)
    timer = next(c for c in objects["callbacks"] if isinstance(c, StepTimer))
    return timer.tokens / (timer.t1 - timer.t0)


def bare_step(net: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict,
              clip: float | None) -> None:
    """One plain training step (forward, CE, backward, clip, optimizer): the bare-loop reference."""
    logits, _ = net(batch["input_ids"])
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()


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
            bare_step(net, opt, batch, cfg.trainer.gradient_clip_val)
            sched.step()
            step += 1
            if step > warmup:
                tokens += batch["input_ids"].numel()
            if step == steps:
                break
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both sides")
    args = parser.parse_args()
    steps = args.steps + args.warmup
    platform, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            cfg = compose_cfg(Path(tmp) / f"platform{r}", steps, args.overrides)
            dm = hydra.utils.instantiate(cfg.data, _convert_="all")
            dm.prepare_data()
            dm.setup("fit")
            # Alternate which side goes first, so neither profits from running second.
            sides = [("platform", partial(platform_run, cfg, args.warmup)),
                     ("bare", partial(bare_run, cfg, dm, steps, args.warmup))]
            for name, run in sides if r % 2 == 0 else sides[::-1]:
                (platform if name == "platform" else bare).append(run())
            print(f"round {r}: platform {platform[-1]:,.0f} tokens/s, bare loop {bare[-1]:,.0f} tokens/s")
    p, b = statistics.median(platform), statistics.median(bare)
    print(f"threads={torch.get_num_threads()} steps={args.steps} (after {args.warmup} warm-up) "
          f"rounds={args.rounds}")
    print(f"platform {p:,.0f} tokens/s | bare loop {b:,.0f} tokens/s | platform/bare = {p / b:.3f}")


if __name__ == "__main__":
    main()
