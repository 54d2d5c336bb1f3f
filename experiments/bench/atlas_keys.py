"""What a key alone buys: a new book fitted as a key against a frozen core, per key dimension.

    lhp bench atlas_keys                       # key dims 16,32,64,128
    lhp bench atlas_keys --key-dims 32,64 --steps 3000 -- trainer.max_steps=3000

For every key dimension it trains a master core (``experiment=fractal_atlas`` with the key dim
overridden) on the master books (default: alice whole + the first 100,000 characters of
tinyshakespeare), whose vocabulary also covers the new book's characters
(``data.charset_books``), then freezes it and fits only a key for the new book (default: the
first 100,000 characters of pride_and_prejudice; ``lhp atlas add-book``). Reported:
reconstruction accuracy and bits per character of the new book with the starting key (the mean
of the master keys, no fitting) and with the fitted key, the key's size (fp16 payload and the
library's key file), and the core's size. The write-up's claim is "one core + a 1-5 KB key =
one book"; the last line states the best accuracy a key alone reached. Files go to ``--out`` (a
directory; default ``logs/bench/atlas_keys_<time>``), the report to ``<out>/report.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from datamodules.book_coords import read_book
from experiments.bench import common
from lhp.errors import entry_point
from lit_models.atlas import evaluate_text
from lit_models.atlas_workflow import add_book, key_init, train_core

COLUMNS = [("key_dim", "key dim", "d"), ("key_fp16_B", "key fp16 B", "d"),
           ("key_file_B", "key file B", "d"), ("core_B", "core B", ",d"),
           ("master_acc", "master books min acc", ".4f"), ("start_acc", "start acc", ".4f"),
           ("start_bpc", "start bpc", ".3f"), ("acc", "fitted acc", ".4f"), ("bpc", "fitted bpc", ".3f"),
           ("wrong", "wrong", ",d"), ("train_s", "core train s", ".0f"), ("fit_s", "key fit s", ".0f")]


def run(key_dims: list[int], masters: list[str], master_limits: list[int | None], new_book: str,
        new_limit: int | None, steps: int, lr: float, out: Path, overrides: list[str],
        experiment: str = "fractal_atlas") -> list[dict[str, Any]]:
    """Per key dimension: train a core on ``masters``, fit a key for ``new_book``; the rows."""
    rows = []
    for kd in common.progress(key_dims, "key dimensions"):
        t0 = time.perf_counter()
        lib, _ = train_core(out / f"key{kd}" / "library", masters, train_fn=common.train_run,
                            run_dir=out / f"key{kd}" / "train", max_chars=master_limits,
                            experiment=experiment,
                            overrides=[f"model.arch_config.key_dim={kd}",
                                       f"data.charset_books=['{new_book}']", *overrides])
        train_s = time.perf_counter() - t0
        core, vocab = lib.load_core()
        ids = vocab.encode(read_book(new_book, new_limit), "error", new_book)
        start = evaluate_text(core, ids, z=key_init(lib))
        entry = add_book(lib.root, new_book, None, new_limit, steps=steps, lr=lr)
        masters_acc = [b["acc"] for b in lib.books()[:-1]]
        rows.append({"key_dim": kd, "key_fp16_B": 2 * kd, "key_file_B": entry["key_bytes"],
                     "core_B": lib.index()["core"]["bytes"], "master_acc": min(masters_acc),
                     "start_acc": start["acc"], "start_bpc": start["bpc"], "acc": entry["acc"],
                     "bpc": entry["bpc"], "wrong": int(entry["wrong"]), "train_s": train_s,
                     "fit_s": entry["fit_s"]})
    return rows


@entry_point
def main(argv: list[str] | None = None) -> int:
    from experiments.utils import compose_config

    shared = Path(compose_config("train", [], "/tmp").paths.shared_data_dir) / "books"
    parser = common.bench_parser(__doc__.split("\n\n")[0], overrides=True)
    parser.add_argument("--key-dims", default="16,32,64,128")
    parser.add_argument("--master", action="append", help="master book (repeat; default alice + shakespeare)")
    parser.add_argument("--master-max-chars", default="null,100000",
                        help="one limit per master book, comma-separated (null: whole)")
    parser.add_argument("--new-book", default=str(shared / "pride_and_prejudice.txt"))
    parser.add_argument("--new-max-chars", type=int, default=100000)
    parser.add_argument("--steps", type=int, default=2000, help="key-fitting steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--experiment", default="fractal_atlas", help="experiment of the master cores")
    args = common.parse_args(parser, argv)
    masters = args.master or [str(shared / "alice_in_wonderland.txt"), str(shared / "tinyshakespeare.txt")]
    limits = [None if m.strip() == "null" else int(m) for m in args.master_max_chars.split(",")]
    if len(limits) != len(masters):
        parser.error(f"--master-max-chars has {len(limits)} entries for {len(masters)} master books")
    out = common.out_dir(args.out, "atlas_keys")
    dims = [int(d) for d in args.key_dims.split(",")]
    rows = run(dims, masters, limits, args.new_book, args.new_max_chars, args.steps, args.lr, out,
               args.overrides, args.experiment)
    n_chars = len(read_book(args.new_book, args.new_max_chars))
    print(f"\nnew book {args.new_book} ({n_chars:,} chars), key fitted against the frozen core")
    best = max(rows, key=lambda r: r["acc"])
    common.report(rows, f"best key alone: key_dim {best['key_dim']} ({best['key_fp16_B']} B fp16) reconstructs "
                        f"{best['acc']:.2%} of the new book ({best['wrong']:,} wrong characters, "
                        f"{best['bpc']:.3f} bpc)", args.out or out, columns=COLUMNS,
                  meta={"new_book": args.new_book, "chars": n_chars})
    return 0


if __name__ == "__main__":
    main()
