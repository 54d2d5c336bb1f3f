"""Overhead of the TopologyMetrics callback: ``gpt_wikitext2`` trained with and without it (at
the callback's defaults: every 50 steps, 256 token vectors from each of 2 layers, H0 + H1),
alternated in one process; the median ratio is the last line.

    python -m experiments.bench.topology_callback [--steps 50] [--warmup 5] [--rounds 2]
        [--experiment gpt_wikitext2] [--threads N] [--quick] [-- overrides]

Both sides are the real platform run (``experiments.train.train``: real datamodule, W&B
offline + CSV loggers, the default callbacks), validation and test switched off; the callback
side adds ``callbacks=with_topology``. Only steps after ``--warmup`` are timed, and ``--steps``
should be a multiple of 50 so the timed steps hold the callback's share of computations
(50 timed steps after 5 warm-up steps: one computation, at step 50). The callback also times
itself (``compute_seconds``), which gives a second, low-noise estimate of the overhead.

``--quick`` (for a busy machine, where 2 x 55 steps take too long): in one process, the same
model and data, alternately time ``--steps`` plain training steps (forward, CE, backward,
clip, AdamW) and one callback computation (probe forward, hooks, H0 + H1 of 2 x 256 vectors,
statistics, diagram image); the estimated ratio is
``1 + median(computation) / (every_n_steps x median(step))``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import hydra
import torch
from omegaconf import open_dict

from callbacks.topology_metrics import TopologyMetrics, diagram_image
from experiments.bench.overhead import StepTimer, bare_step
from experiments.train import train
from experiments.utils import compose_config
from lit_models.optim import build_optimizer


def run(out: Path, experiment: str, steps: int, warmup: int, with_callback: bool,
        overrides: list[str]) -> tuple[float, float]:
    """Train ``warmup + steps`` steps; (seconds of the timed steps, callback seconds in them)."""
    cfg = compose_config("train", [
        f"experiment={experiment}", f"trainer.max_steps={warmup + steps}",
        "trainer.max_time=null", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "test=false", "extras.print_config=false", f"paths.log_dir={out}/logs",
        *(["callbacks=with_topology"] if with_callback else []), *overrides], out)
    with open_dict(cfg):
        cfg.callbacks.step_timer = {"_target_": "experiments.bench.overhead.StepTimer",
                                    "warmup": warmup}
    _, objects = train(cfg)
    timer = next(c for c in objects["callbacks"] if isinstance(c, StepTimer))
    topo = [c for c in objects["callbacks"] if isinstance(c, TopologyMetrics)]
    return timer.t1 - timer.t0, (topo[0].compute_seconds if topo else 0.0)


def quick(out: Path, experiment: str, steps: int, rounds: int, overrides: list[str]) -> None:
    """The ``--quick`` estimate (see the module docstring)."""
    cfg = compose_config("train", [f"experiment={experiment}", "callbacks=with_topology",
                                   f"paths.log_dir={out}/logs", *overrides], out)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    model = hydra.utils.instantiate(cfg.model, arch_config={"vocab_size": dm.vocab_size},
                                    _convert_="all")
    opt = build_optimizer(model.net, **cfg.model.optimizer)
    cb: TopologyMetrics = hydra.utils.instantiate(cfg.callbacks.topology_metrics, _convert_="all")
    cb.setup(None, model, "fit")
    cb._set_probe(next(iter(dm.val_dataloader())))
    batches = iter(dm.train_dataloader())

    def train_step() -> None:
        batch = next(batches)
        model.train()
        bare_step(model, opt, batch, cfg.trainer.gradient_clip_val)

    def computation() -> None:
        diagrams = cb.diagrams(model)
        for diagram in diagrams.values():
            cb.statistics(diagram)
        diagram_image(diagrams)

    train_step()  # warm-up
    step_s, cb_s = [], []
    for r in range(rounds):
        for name in (("steps", "callback") if r % 2 == 0 else ("callback", "steps")):
            t0 = time.perf_counter()
            if name == "steps":
                for _ in range(steps):
                    train_step()
                step_s.append((time.perf_counter() - t0) / steps)
            else:
                computation()
                cb_s.append(time.perf_counter() - t0)
        print(f"round {r}: {step_s[-1]:.3f} s/step, callback computation {cb_s[-1]:.3f} s "
              f"(layers {cb.layer_names})")
    step, comp = statistics.median(step_s), statistics.median(cb_s)
    ratio = 1 + comp / (cb.every_n_steps * step)
    print(f"{experiment}: threads={torch.get_num_threads()} rounds={rounds} x {steps} steps; "
          f"callback every {cb.every_n_steps} steps, {cb.max_points} vectors x "
          f"{len(cb.layer_names)} layers, H0+H1")
    print(f"estimated with/without callback training time = {ratio:.4f} (median step "
          f"{step:.3f} s, median computation {comp:.3f} s; overhead {100 * (ratio - 1):+.2f}%, "
          f"goal <= +5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="gpt_wikitext2")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="estimate from timed steps and timed computations (see docstring)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both sides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            quick(Path(tmp), args.experiment, args.steps, args.rounds, args.overrides)
        return
    without, with_cb, cb_share = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # Alternate which side goes first, so neither profits from running second.
            for side in ((False, True) if r % 2 == 0 else (True, False)):
                seconds, cb_seconds = run(Path(tmp) / f"r{r}-{int(side)}", args.experiment,
                                          args.steps, args.warmup, side, args.overrides)
                if side:
                    with_cb.append(seconds)
                    cb_share.append(cb_seconds / seconds)
                else:
                    without.append(seconds)
            print(f"round {r}: without {without[-1] / args.steps:.3f} s/step, with callback "
                  f"{with_cb[-1] / args.steps:.3f} s/step (callback's own time "
                  f"{100 * cb_share[-1]:.2f}% of the timed steps)")
    ratio = statistics.median(w / o for w, o in zip(with_cb, without, strict=True))
    print(f"{args.experiment}: threads={torch.get_num_threads()} steps={args.steps} (after {args.warmup} warm-up) "
          f"rounds={args.rounds}; callback: every 50 steps, 256 vectors x 2 layers, H0+H1")
    print(f"callback's own time: {100 * statistics.median(cb_share):.2f}% of training time "
          f"(median over rounds)")
    print(f"with/without callback training time = {ratio:.3f} (median of {args.rounds} rounds; "
          f"overhead {100 * (ratio - 1):+.1f}%, goal <= +5%)")


if __name__ == "__main__":
    main()
