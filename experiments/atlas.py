"""Fractal Atlas workflow: one master core, one small key per book, in a library directory.

    lhp atlas train-core --library LIB --book a.txt [--book b.txt ...]
        [--title A ...] [--max-chars 100000] [--experiment fractal_book] [-- train overrides]
    lhp atlas export --library LIB --ckpt RUN/checkpoints/last.ckpt
    lhp atlas add-book --library LIB --book new.txt [--title T] [--steps 2000]
    lhp atlas reconstruct --library LIB --book-id 0 [--out book.txt] [--check]
    lhp atlas list --library LIB
    lhp atlas picture --library LIB --book-id 0 --out DIR

(``python -m experiments.atlas ...`` is the same.) The steps are library code
(``lit_models/atlas_workflow.py``); this file parses arguments and passes the platform's
trainer in. ``train-core`` trains the decoder on the books with ``experiments.train`` (W&B offline + CSV,
checkpoints; every Hydra override works after ``--``) and exports the best checkpoint:
the core plus one key per training book. ``add-book`` freezes the core and fits only a new
key. ``reconstruct`` regenerates a book from core + key (argmax at every position) and diffs
it against the original. The library format is described in ``lit_models/atlas.py``.
Exit status: 0 ok, 1 ``reconstruct --check`` found differences, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import REPO_ROOT, split_passthrough
from lhp.errors import entry_point
from lit_models import atlas_workflow as workflow


def hydra_train(overrides: list[str], run_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """The platform's training of ``conf/train.yaml`` + ``overrides`` in ``run_dir``."""
    from experiments.train import train
    from experiments.utils import compose_config

    return train(compose_config("train", overrides, run_dir))


def default_run_dir(library: str | Path) -> Path:
    return REPO_ROOT / "logs" / "atlas" / f"{Path(library).name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--library", required=True, help="library directory")
        return p

    p = cmd("train-core", "train a master core on one or more books and export it")
    p.add_argument("--book", action="append", required=True, help="UTF-8 text file (repeat)")
    p.add_argument("--title", action="append", help="title per book (repeat, same order)")
    p.add_argument("--max-chars", type=int, help="first N characters of each book")
    p.add_argument("--experiment", default="fractal_book", help="experiment config (fractal_book)")
    p.add_argument("--run-dir", help="training output directory (default logs/atlas/<lib>_<time>)")
    p = cmd("export", "export a coordinate-decoder checkpoint into a new library")
    p.add_argument("--ckpt", required=True)
    p = cmd("add-book", "freeze the core and fit only a key for a new book")
    p.add_argument("--book", required=True)
    p.add_argument("--title")
    p.add_argument("--max-chars", type=int)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p = cmd("reconstruct", "regenerate a book from core + key and diff it with the original")
    p.add_argument("--book-id", type=int, required=True)
    p.add_argument("--out", help="write the regenerated text here")
    p.add_argument("--against", help="original to compare with (default: the indexed source)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the reconstruction is exact")
    cmd("list", "show the library and check its consistency")
    p = cmd("picture", "hidden-state trajectory and accuracy-along-the-book PNGs")
    p.add_argument("--book-id", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--passage", type=int, default=200)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv, overrides = split_passthrough(argv)
    args = _parser().parse_args(argv)
    if args.command == "train-core":
        workflow.train_core(args.library, args.book, train_fn=hydra_train,
                            run_dir=args.run_dir or default_run_dir(args.library), titles=args.title,
                            max_chars=args.max_chars, experiment=args.experiment, overrides=overrides)
    elif args.command == "export":
        workflow.export_checkpoint(args.ckpt, args.library)
    elif args.command == "add-book":
        workflow.add_book(args.library, args.book, args.title, args.max_chars, args.steps, args.lr,
                          args.batch_size, args.seed)
    elif args.command == "reconstruct":
        report = workflow.reconstruct(args.library, args.book_id, args.out, args.against)
        if args.check and report["wrong"] != 0:
            return 1
    elif args.command == "list":
        workflow.list_library(args.library)
    elif args.command == "picture":
        workflow.picture(args.library, args.book_id, args.out, args.passage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
