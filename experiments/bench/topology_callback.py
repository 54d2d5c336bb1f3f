"""Overhead of the TopologyMetrics callback: ``gpt_wikitext2`` trained with and without it (at
the callback's defaults: every 50 steps, 256 token vectors from each of 2 layers, H0 + H1),
alternated in one process; the median ratio is the last line.

    lhp bench topology_callback [--steps 50] [--warmup 5] [--rounds 2]
        [--experiment gpt_wikitext2] [--integration twonn,mle,lz,te,recon] [--threads N]
        [--quick] [--out report.json] [-- overrides]

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

``--integration`` adds the callback's integration metrics (``callbacks.topology_metrics.
integration``) to the callback side; ``--quick`` then also times each metric alone on the same
states (median over rounds) and prints its cost per callback call in training steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import open_dict

from callbacks.topology_metrics import INTEGRATION_METRICS, TopologyMetrics, diagram_image
from experiments.bench import common
from experiments.utils import compose_config, instantiate
from lhp.errors import entry_point
from lit_models.optim import build_optimizer

GOAL = "goal <= +5%"


def integration_override(metrics: list[str]) -> list[str]:
    """The Hydra override that turns the integration metrics on (none: no override)."""
    return [f"callbacks.topology_metrics.integration=[{','.join(metrics)}]"] if metrics else []


def run(out: Path, experiment: str, steps: int, warmup: int, with_callback: bool,
        overrides: list[str]) -> tuple[float, float]:
    """Train ``warmup + steps`` steps; (seconds of the timed steps, callback seconds in them)."""
    cfg = compose_config("train", [
        f"experiment={experiment}", f"trainer.max_steps={warmup + steps}", *common.TIMING_OVERRIDES,
        f"paths.log_dir={out}/logs", *(["callbacks=with_topology"] if with_callback else []),
        *overrides], out)
    with open_dict(cfg):
        cfg.callbacks.step_timer = {"_target_": f"{common.StepTimer.__module__}.StepTimer", "warmup": warmup}
    _, objects = common.train_config(cfg)
    timer = next(c for c in objects["callbacks"] if isinstance(c, common.StepTimer))
    topo = [c for c in objects["callbacks"] if isinstance(c, TopologyMetrics)]
    return timer.t1 - timer.t0, (topo[0].compute_seconds if topo else 0.0)


def quick(out: Path, experiment: str, steps: int, rounds: int, overrides: list[str],
          integration: list[str] = ()) -> tuple[list[dict], str, list[str], float]:
    """The ``--quick`` estimate (see the module docstring): (rows, headline, notes, ratio)."""
    cfg = compose_config("train", [f"experiment={experiment}", "callbacks=with_topology",
                                   f"paths.log_dir={out}/logs", *integration_override(integration),
                                   *overrides], out)
    dm = common.fit_datamodule(cfg)
    model = instantiate(cfg.model, "model", arch_config={"vocab_size": dm.vocab_size},
                        _convert_="all")
    opt = build_optimizer(model.net, **cfg.model.optimizer)
    cb: TopologyMetrics = instantiate(cfg.callbacks.topology_metrics, "callbacks.topology_metrics",
                                      _convert_="all")
    cb.setup(None, model, "fit")
    # The callback's own hook picks the probe batch from the validation loader (as in training).
    cb.on_train_start(SimpleNamespace(is_global_zero=True, datamodule=dm), model)
    batches = iter(dm.train_dataloader())

    def train_step() -> None:
        batch = next(batches)
        model.train()
        common.bare_step(model, opt, batch, cfg.trainer.gradient_clip_val)

    def computation() -> None:  # what the callback computes at a trigger (logging aside)
        states = cb.probe_states(model)
        diagrams = cb.diagrams_of(cb._select(states, "index"))
        for diagram in diagrams.values():
            cb.statistics(diagram)
        if cb.integration:
            cb.integration_metrics(states, diagrams)
        diagram_image(diagrams)

    train_step()  # warm-up
    rows = []
    for r in common.progress(range(rounds), "topology callback rounds"):
        row = {"round": r}
        for name in (("steps", "callback") if r % 2 == 0 else ("callback", "steps")):
            t0 = time.perf_counter()
            if name == "steps":
                for _ in range(steps):
                    train_step()
                row["step_s"] = (time.perf_counter() - t0) / steps
            else:
                computation()
                row["callback_s"] = time.perf_counter() - t0
        rows.append(row)
    step, comp = (statistics.median(row[k] for row in rows) for k in ("step_s", "callback_s"))
    ratio = 1 + comp / (cb.every_n_steps * step)
    notes = [f"{experiment}: threads={torch.get_num_threads()} rounds={rounds} x {steps} steps; "
             f"callback every {cb.every_n_steps} steps, {cb.max_points} vectors x "
             f"{len(cb.layer_names)} layers ({cb.layer_names}), H0+H1"]
    notes += [f"integration metric {name}: {seconds:.4f} s per callback call = "
              f"{seconds / step:.3f} training steps" for name, seconds in
              metric_costs(cb, model, rounds).items()]
    extra = f" with integration {integration}" if integration else ""
    headline = (f"estimated with/without callback{extra} training time = {ratio:.4f} (median step "
                f"{step:.3f} s, median computation {comp:.3f} s; overhead {100 * (ratio - 1):+.2f}%, "
                f"{GOAL})")
    return rows, headline, notes, ratio


def metric_costs(cb: TopologyMetrics, model: torch.nn.Module, rounds: int) -> dict[str, float]:
    """Median seconds of each of the callback's integration metrics alone, on one probe's states
    (symbolising included in lz and te: each would pay it alone)."""
    chosen = list(cb.integration)
    states = cb.probe_states(model)
    diagrams = cb.diagrams_of(cb._select(states, "index"))
    costs = {}
    try:
        for name in chosen:
            cb.integration = [name]
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                cb.integration_metrics(states, diagrams)
                times.append(time.perf_counter() - t0)
            costs[name] = statistics.median(times)
    finally:
        cb.integration = chosen
    return costs


def measured(out: Path, args: argparse.Namespace) -> tuple[list[dict], str, list[str], float]:
    """Both sides trained for real, alternated: (rows, headline, notes, ratio)."""
    rows = []
    for r in common.progress(range(args.rounds), "topology callback rounds"):
        row = {"round": r}
        # Alternate which side goes first, so neither profits from running second.
        for side in ((False, True) if r % 2 == 0 else (True, False)):
            seconds, cb_seconds = run(out / f"r{r}-{int(side)}", args.experiment, args.steps,
                                      args.warmup, side,
                                      [*integration_override(args.integration), *args.overrides])
            if side:
                row.update(with_s=seconds / args.steps, cb_share=cb_seconds / seconds)
            else:
                row["without_s"] = seconds / args.steps
        rows.append(row)
    ratio = statistics.median(row["with_s"] / row["without_s"] for row in rows)
    notes = [f"{args.experiment}: threads={torch.get_num_threads()} steps={args.steps} (after "
             f"{args.warmup} warm-up) rounds={args.rounds}; callback: every 50 steps, 256 vectors "
             f"x 2 layers, H0+H1, integration {args.integration or 'none'}",
             f"callback's own time: {100 * statistics.median(r['cb_share'] for r in rows):.2f}% "
             "of training time (median over rounds)"]
    headline = (f"with/without callback training time = {ratio:.3f} (median of {args.rounds} rounds; "
                f"overhead {100 * (ratio - 1):+.1f}%, {GOAL})")
    return rows, headline, notes, ratio


@entry_point
def main(argv: list[str] | None = None) -> float:
    parser = common.bench_parser(__doc__.splitlines()[0], overrides=True, steps=(50, 5, 2))
    parser.add_argument("--experiment", default="gpt_wikitext2")
    parser.add_argument("--quick", action="store_true",
                        help="estimate from timed steps and timed computations (see docstring)")
    parser.add_argument("--integration", type=lambda v: [m for m in v.split(",") if m],
                        default=[], help="comma-separated integration metrics for the callback "
                                         "side (twonn,mle,lz,te,recon; default: none)")
    args = common.parse_args(parser, argv)
    bad = [m for m in args.integration if m not in INTEGRATION_METRICS]
    if bad:
        parser.error(f"--integration: unknown metrics {bad}; choose from {INTEGRATION_METRICS}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            rows, headline, notes, ratio = quick(Path(tmp), args.experiment, args.steps, args.rounds,
                                                 args.overrides, args.integration)
        else:
            rows, headline, notes, ratio = measured(Path(tmp), args)
    columns = [("round", "round", "d")] + (
        [("step_s", "s/step", ".3f"), ("callback_s", "callback computation s", ".3f")] if args.quick
        else [("without_s", "without s/step", ".3f"), ("with_s", "with callback s/step", ".3f"),
              ("cb_share", "callback's own share", ".2%")])
    common.report(rows, headline, args.out, columns=columns, notes=notes, meta={"ratio": ratio})
    return ratio


if __name__ == "__main__":
    main()
