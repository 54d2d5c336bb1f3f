"""Fractal Atlas workflow: one master core, one small key per book, in a library directory.

    python -m experiments.atlas train-core --library LIB --book a.txt [--book b.txt ...]
        [--title A ...] [--max-chars 100000] [--experiment fractal_book] [-- train overrides]
    python -m experiments.atlas export --library LIB --ckpt RUN/checkpoints/last.ckpt
    python -m experiments.atlas add-book --library LIB --book new.txt [--title T] [--steps 2000]
    python -m experiments.atlas reconstruct --library LIB --book-id 0 [--out book.txt] [--check]
    python -m experiments.atlas list --library LIB
    python -m experiments.atlas picture --library LIB --book-id 0 --out DIR

``train-core`` trains the decoder on the books with ``experiments.train`` (W&B offline + CSV,
checkpoints; every Hydra override works after ``--``) and exports the best checkpoint:
the core plus one key per training book. ``add-book`` freezes the core and fits only a new
key. ``reconstruct`` regenerates a book from core + key (argmax at every position) and diffs
it against the original. The library format is described in ``lit_models/atlas.py``.
Exit status: 0 ok, 1 ``reconstruct --check`` found differences, 2 bad input.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.book_coords import read_book
from experiments import REPO_ROOT, split_passthrough
from lhp.errors import entry_point
from lit_models.atlas import AtlasError, AtlasLibrary, evaluate_text, fit_key, text_sha256


def _quote(value: str) -> str:
    """A Hydra override value that survives any path (quotes and backslashes escaped)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def train_core(library: str | Path, books: Sequence[str], titles: Sequence[str] | None = None,
               max_chars: int | Sequence[int | None] | None = None, experiment: str = "fractal_book",
               overrides: Sequence[str] = (), run_dir: str | Path | None = None,
               overwrite: bool = False) -> tuple[AtlasLibrary, dict[str, float]]:
    """Train a core on ``books`` (experiments.train) and export it with one key per book."""
    from experiments.train import train
    from experiments.utils import compose_config

    if not books:
        raise AtlasError("train-core needs at least one --book")
    limits = list(max_chars) if isinstance(max_chars, list | tuple) else [max_chars] * len(books)
    for book, limit in zip(books, limits, strict=True):
        read_book(book, limit)  # fail before training on a missing/empty/binary book
    if AtlasLibrary(library).index_path.exists() and not overwrite:
        raise AtlasError(f"{library} already holds an atlas library; pick a new directory")
    args = [f"experiment={experiment}", f"data.books=[{','.join(_quote(b) for b in books)}]",
            f"model.arch_config.num_books={len(books)}"]
    if max_chars is not None:  # else the experiment's own data.max_chars (e.g. one per book)
        args.append("data.max_chars=" + (f"[{','.join('null' if m is None else str(m) for m in limits)}]"
                                         if isinstance(max_chars, list | tuple) else str(max_chars)))
    if titles:
        args.append(f"data.titles=[{','.join(_quote(t) for t in titles)}]")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(run_dir) if run_dir else REPO_ROOT / "logs" / "atlas" / f"{Path(library).name}_{stamp}"
    cfg = compose_config("train", [*args, *overrides], run_dir)
    metrics, objects = train(cfg)
    ckpt_cb = objects["trainer"].checkpoint_callback
    ckpt = (ckpt_cb.best_model_path or ckpt_cb.last_model_path) if ckpt_cb else ""
    if not ckpt:
        raise AtlasError(f"training in {run_dir} left no checkpoint to export")
    return export_checkpoint(ckpt, library, overwrite=overwrite), metrics


def export_checkpoint(ckpt_path: str | Path, library: str | Path, overwrite: bool = False) -> AtlasLibrary:
    """Core + one key per training book from a CoordinateDecoder checkpoint into a library."""
    from lit_models.checkpoints import load_checkpoint
    from lit_models.coordinate_decoder import CoordinateDecoder

    ckpt = load_checkpoint(ckpt_path)
    charset, data_cfg = ckpt.get("charset"), ((ckpt.get("platform") or {}).get("config") or {}).get("data")
    if charset is None or not data_cfg or "books" not in data_cfg:
        raise AtlasError(f"{ckpt_path}: not a coordinate-decoder checkpoint of experiments.train "
                         "(no charset / data.books)")
    module = CoordinateDecoder(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    net = module.net
    if net.keys is None:
        raise AtlasError(f"{ckpt_path}: this core has no book key (key_dim=0, e.g. V3): it can be "
                         "trained and evaluated, but not stored as an atlas of keys")
    lib = AtlasLibrary.create(library, net, charset, overwrite=overwrite)
    core, vocab = lib.load_core()
    books = data_cfg["books"] if isinstance(data_cfg["books"], list) else [data_cfg["books"]]
    limits = data_cfg.get("max_chars")
    limits = limits if isinstance(limits, list) else [limits] * len(books)
    titles = data_cfg.get("titles") or [Path(b).stem for b in books]
    for i, (path, limit, title) in enumerate(zip(books, limits, titles, strict=True)):
        text = read_book(path, limit)
        z = net.keys.weight[i].detach().clone()
        result = evaluate_text(core, vocab.encode(text, "error", path), z=z)
        entry = lib.add_book(z, title=title, text=text, source=str(path),
                             metrics={"acc": result["acc"], "bpc": result["bpc"], "wrong": result["wrong"]})
        print(f"exported book {entry['book_id']} {title!r}: {len(text)} chars, "
              f"acc {result['acc']:.4f} ({result['wrong']} wrong), {result['bpc']:.3f} bpc")
    print(f"library {lib.root}: core {lib.index()['core']['bytes']:,} bytes, {len(books)} key(s)")
    return lib


def _key_init(lib: AtlasLibrary) -> torch.Tensor | None:
    """Mean of the library's keys: a new key starts from the 'average book'."""
    keys = [lib.load_key(b["book_id"]) for b in lib.books()]
    return torch.stack(keys).mean(0) if keys else None


def add_book(library: str | Path, book: str | Path, title: str | None = None,
             max_chars: int | None = None, steps: int = 2000, lr: float = 1e-2,
             batch_size: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Fit a key for ``book`` against the library's frozen core and store it."""
    lib = AtlasLibrary(library)
    core, vocab = lib.load_core()
    text = read_book(book, max_chars)
    ids = vocab.encode(text, "error", str(book))  # characters outside the core: clear error
    t0 = time.perf_counter()
    z, losses = fit_key(core, ids, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                        init=_key_init(lib))
    fit_s = time.perf_counter() - t0
    result = evaluate_text(core, ids, z=z)
    entry = lib.add_book(z, title=title or Path(book).stem, text=text, source=str(book),
                         metrics={"acc": result["acc"], "bpc": result["bpc"],
                                  "wrong": result["wrong"], "fit_steps": steps, "fit_s": fit_s})
    print(f"added book {entry['book_id']} {entry['title']!r}: {len(text)} chars, key {z.numel()} "
          f"floats ({entry['key_bytes']} bytes on disk), acc {result['acc']:.4f} "
          f"({result['wrong']} wrong), {result['bpc']:.3f} bpc; key fit {fit_s:.1f}s, "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return entry


def reconstruct(library: str | Path, book_id: int, out: str | Path | None = None,
                against: str | Path | None = None, max_diffs: int = 5) -> dict[str, Any]:
    """Regenerate a book (argmax at every position) and compare it with the original."""
    lib = AtlasLibrary(library)
    entry = lib.book(book_id)
    core, vocab = lib.load_core()
    z = lib.load_key(book_id)
    result = evaluate_text(core, torch.zeros(entry["n_chars"], dtype=torch.long), z=z)
    text = vocab.decode(result["pred"])
    if out:
        Path(out).write_text(text, encoding="utf-8", newline="")
    source = Path(against or entry["source"])
    original = read_book(source, entry["n_chars"]) if source.is_file() else None
    report = {"book_id": book_id, "title": entry["title"], "n_chars": len(text),
              "sha256_match": None, "wrong": None}
    if original is None:
        print(f"book {book_id}: regenerated {len(text)} chars; original {source} not found, no diff")
        return report
    wrong = [i for i, (a, b) in enumerate(zip(text, original, strict=False)) if a != b]
    wrong += list(range(min(len(text), len(original)), max(len(text), len(original))))
    report.update(wrong=len(wrong), sha256_match=text_sha256(text) == entry["sha256"],
                  acc=1 - len(wrong) / max(len(original), 1))
    print(f"book {book_id} {entry['title']!r}: {len(original) - len(wrong)}/{len(original)} "
          f"characters right ({report['acc']:.4%}), {len(wrong)} wrong; exact: "
          f"{'yes' if not wrong else 'no'} (sha256 {'matches' if report['sha256_match'] else 'differs'})")
    for line in list(difflib.unified_diff(original.splitlines(), text.splitlines(), "original",
                                          "reconstructed", n=0, lineterm=""))[: 3 + 2 * max_diffs]:
        print("  " + line)
    return report


def list_library(library: str | Path) -> list[dict[str, Any]]:
    lib = AtlasLibrary(library)
    index = lib.index()
    core = index["core"]
    print(f"library {lib.root}: core {core['bytes']:,} bytes, {core['params']:,} params, "
          f"key_dim {core['key_dim']}, config {core['config_hash'][:12]}, "
          f"charset {core['charset_hash'][:12]}")
    print(f"{'id':>4}  {'title':<28} {'chars':>9} {'key B':>6} {'acc':>8} {'bpc':>7}  sha256")
    for b in index["books"]:
        print(f"{b['book_id']:>4}  {b['title'][:28]:<28} {b['n_chars']:>9,} {b['key_bytes']:>6} "
              f"{b.get('acc', float('nan')):>8.4f} {b.get('bpc', float('nan')):>7.3f}  {b['sha256'][:12]}")
    problems = lib.verify()
    if problems:
        raise AtlasError(f"library {lib.root} is inconsistent: " + "; ".join(problems))
    print("consistent: yes")
    return index["books"]


def picture(library: str | Path, book_id: int, out: str | Path, passage: int = 200) -> dict[str, Path]:
    from lit_models.fractal_pictures import draw_pictures

    lib = AtlasLibrary(library)
    entry = lib.book(book_id)
    core, vocab = lib.load_core()
    text = read_book(entry["source"], entry["n_chars"])
    paths = draw_pictures(core, vocab.encode(text, "unk"), out, book_index=None, z=lib.load_key(book_id),
                          passage=passage, title=entry["title"], charset=vocab.chars)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.atlas", description=__doc__.split("\n\n")[0])
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
        train_core(args.library, args.book, args.title, args.max_chars, args.experiment,
                   overrides, args.run_dir)
    elif args.command == "export":
        export_checkpoint(args.ckpt, args.library)
    elif args.command == "add-book":
        add_book(args.library, args.book, args.title, args.max_chars, args.steps, args.lr,
                 args.batch_size, args.seed)
    elif args.command == "reconstruct":
        report = reconstruct(args.library, args.book_id, args.out, args.against)
        if args.check and report["wrong"] != 0:
            return 1
    elif args.command == "list":
        list_library(args.library)
    elif args.command == "picture":
        picture(args.library, args.book_id, args.out, args.passage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
