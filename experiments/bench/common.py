"""What the benchmarks share (a helper module, not a benchmark): the common flags, the report
(a table, then the headline figure as the last line, also written to ``--out``), a progress bar,
and the pieces of timed training runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
import torch.nn.functional as F

from experiments import REPO_ROOT
from lhp.errors import UserError

T = TypeVar("T")
# Trained gpt_wikitext2 checkpoints the H2Q benchmarks use by default, newest first per pattern.
CHECKPOINT_CANDIDATES = ("logs/study/gpt_wikitext2_seeds/gpt/seed1/checkpoints/last.ckpt",
                         "logs/train/gpt_wikitext2/*/checkpoints/last.ckpt")
# Overrides of a timed training run: no validation, no test, nothing printed; logs under `out`.
TIMING_OVERRIDES = ("trainer.max_time=null", "trainer.limit_val_batches=0",
                    "trainer.num_sanity_val_steps=0", "test=false", "extras.print_config=false")
Column = tuple[str, str, str]  # (row key, header, format spec)


# ----------------------------------------------------------------------------- flags and report


def bench_parser(description: str, *, repeats: int | None = None, overrides: bool = False,
                 steps: tuple[int, int, int] | None = None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has.

    ``--out`` (the report as JSON: a ``.json`` file, or a directory that gets ``report.json``),
    ``--threads`` (torch CPU threads); ``--repeats`` when ``repeats`` gives its default;
    Hydra ``overrides`` (positional, after ``--``) when asked; ``--steps --warmup --rounds``
    (timed training steps, untimed ones before them, alternated rounds) when ``steps`` gives
    their defaults.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="write the report (rows + headline) as JSON: a .json file, or a "
                             "directory that gets report.json")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (median)")
    if steps is not None:
        for flag, default, text in zip(("--steps", "--warmup", "--rounds"), steps, (
                "timed training steps", "untimed steps before them", "rounds, sides alternated"),
                strict=True):
            parser.add_argument(flag, type=int, default=default, help=text)
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="Hydra train overrides (after `--`)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, check the common flags and apply ``--threads``."""
    args = parser.parse_args(argv)
    for flag in ("threads", "repeats", "steps", "rounds"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if spec else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table of ``rows`` (missing or None values: ``-``)."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" if not spec else "---:" for _, _, spec in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key), spec) for key, _, spec in columns) + " |"
              for row in rows]
    return "\n".join(lines)


def report(rows: Sequence[Mapping[str, Any]], headline: str, out: Path | None = None, *,
           columns: Sequence[Column] | None = None, notes: Sequence[str] = (),
           meta: Mapping[str, Any] | None = None) -> Path | None:
    """Print the table (when ``columns`` are given), the notes, then ``headline`` as the last
    line; with ``out``, also write ``{"headline", "rows", **meta}`` as JSON. Returns that path."""
    if columns:
        print("\n" + table(rows, columns) + "\n")
    for note in notes:
        print(note)
    print(headline, flush=True)
    if out is None:
        return None
    path = out if out.suffix == ".json" else out / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"headline": headline, "rows": list(rows), **(meta or {})},
                               indent=1, default=str) + "\n")
    return path


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar and ETA on a terminal; silent otherwise (CI logs)."""
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True,
                     disable=not sys.stdout.isatty())


def out_dir(out: Path | None, name: str) -> Path:
    """``--out`` when it is a directory, else ``logs/bench/<name>_<time>`` (output files)."""
    if out is not None and out.suffix != ".json":
        return out
    return REPO_ROOT / "logs" / "bench" / f"{name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


# ----------------------------------------------------------------------------- training runs


def train_config(cfg: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """The platform's real training run (``experiments.train.train``) of a composed config."""
    from experiments.train import train

    return train(cfg)


def train_run(overrides: list[str], run_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """The platform's training of ``conf/train.yaml`` + ``overrides`` in ``run_dir``."""
    from experiments.utils import compose_config

    return train_config(compose_config("train", overrides, run_dir))


def fit_datamodule(cfg: Any) -> Any:
    """The config's datamodule, prepared and set up for fitting."""
    from experiments.utils import instantiate  # every _target_ checked against the allow-list

    dm = instantiate(cfg.data, "data", _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def default_checkpoint() -> Path:
    """The newest trained gpt_wikitext2 checkpoint (study seed 1 first, then plain runs)."""
    for pattern in CHECKPOINT_CANDIDATES:
        found = sorted(REPO_ROOT.glob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    raise UserError(f"no checkpoint: pass --ckpt (looked for {', '.join(CHECKPOINT_CANDIDATES)})")


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch.

    With ``out``, rank zero writes ``{"tokens_per_s", "world_size", "steps"}`` there at the end of
    fit (global tokens: this rank's count times the world size), for runs in another process.
    """

    def __init__(self, warmup: int, out: str | None = None) -> None:
        self.warmup, self.t0, self.t1, self.tokens = warmup, 0.0, 0.0, 0
        self.out = out

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.out and trainer.is_global_zero and self.t1 > self.t0:
            Path(self.out).write_text(json.dumps({
                "tokens_per_s": self.tokens * trainer.world_size / (self.t1 - self.t0),
                "world_size": trainer.world_size, "steps": trainer.global_step}))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.tokens += batch["input_ids"].numel()
            self.t1 = time.perf_counter()


def bare_step(net: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict,
              clip: float | None = None) -> None:
    """One plain training step (forward, CE, backward, clip, optimizer): the bare-loop reference."""
    logits, _ = net(batch["input_ids"])
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
