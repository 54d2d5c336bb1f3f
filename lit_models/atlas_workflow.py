"""Fractal Atlas workflow: train a core, export it, add books, reconstruct, list, draw.

These are the steps behind ``lhp atlas <command>`` (``experiments/atlas.py`` only parses
arguments). Training a core needs the platform's trainer, which lives above the library: the
caller passes it in as ``train_fn(overrides, run_dir) -> (metrics, objects)``, e.g.
``experiments.train.train`` of a composed config. The library format is described in
``lit_models/atlas.py``.
"""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.book_coords import read_book
from lit_models.atlas import AtlasError, AtlasLibrary, evaluate_text, fit_key, text_sha256

# (Hydra overrides of the train config, run directory) -> (metrics, objects with "trainer")
TrainFn = Callable[[list[str], Path], tuple[dict[str, float], dict[str, Any]]]


def _quote(value: str) -> str:
    """A Hydra override value that survives any path (quotes and backslashes escaped)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def core_overrides(books: Sequence[str], titles: Sequence[str] | None = None,
                   max_chars: int | Sequence[int | None] | None = None,
                   experiment: str = "fractal_book") -> list[str]:
    """Train overrides of a core on ``books`` (one key per book); checks the books first."""
    if not books:
        raise AtlasError("train-core needs at least one --book")
    limits = list(max_chars) if isinstance(max_chars, list | tuple) else [max_chars] * len(books)
    for book, limit in zip(books, limits, strict=True):
        read_book(book, limit)  # fail before training on a missing/empty/binary book
    args = [f"experiment={experiment}", f"data.books=[{','.join(_quote(b) for b in books)}]",
            f"model.arch_config.num_books={len(books)}"]
    if max_chars is not None:  # else the experiment's own data.max_chars (e.g. one per book)
        args.append("data.max_chars=" + (f"[{','.join('null' if m is None else str(m) for m in limits)}]"
                                         if isinstance(max_chars, list | tuple) else str(max_chars)))
    if titles:
        args.append(f"data.titles=[{','.join(_quote(t) for t in titles)}]")
    return args


def train_core(library: str | Path, books: Sequence[str], *, train_fn: TrainFn, run_dir: str | Path,
               titles: Sequence[str] | None = None,
               max_chars: int | Sequence[int | None] | None = None, experiment: str = "fractal_book",
               overrides: Sequence[str] = (), overwrite: bool = False
               ) -> tuple[AtlasLibrary, dict[str, float]]:
    """Train a core on ``books`` with ``train_fn`` and export it with one key per book."""
    args = core_overrides(books, titles, max_chars, experiment)
    if AtlasLibrary(library).index_path.exists() and not overwrite:
        raise AtlasError(f"{library} already holds an atlas library; pick a new directory")
    metrics, objects = train_fn([*args, *overrides], Path(run_dir))
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


def key_init(lib: AtlasLibrary) -> torch.Tensor | None:
    """Mean of the library's keys: a new key starts from the 'average book'."""
    keys = [lib.load_key(b["book_id"]) for b in lib.books()]
    return torch.stack(keys).mean(0) if keys else None


def add_book(library: str | Path, book: str | Path, title: str | None = None,
             max_chars: int | None = None, steps: int = 2000, lr: float = 1e-2,
             batch_size: int = 4096, seed: int = 0, progress: bool | None = None) -> dict[str, Any]:
    """Fit a key for ``book`` against the library's frozen core and store it.

    ``progress``: a progress bar over the fitting steps (default: when stdout is a terminal).
    """
    lib = AtlasLibrary(library)
    core, vocab = lib.load_core()
    text = read_book(book, max_chars)
    ids = vocab.encode(text, "error", str(book))  # characters outside the core: clear error
    t0 = time.perf_counter()
    z, losses = fit_key(core, ids, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                        init=key_init(lib),
                        progress=sys.stdout.isatty() if progress is None else progress)
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
    """Print the library's core and books; raise unless every file loads and matches."""
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
    """Hidden-state trajectory and accuracy-along-the-book PNGs of one book into ``out``."""
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
