"""Two-part code of the Fractal Atlas against gzip/bzip2/xz/zstd, on the same bytes, in one run.

    lhp bench atlas_compression                      # trains experiment=fractal_atlas
    lhp bench atlas_compression --library LIB        # an existing library
    lhp bench atlas_compression --out DIR -- trainer.max_steps=2000  # overrides

Without ``--library`` it trains a master core on alice (whole) + the first 100,000 characters
of tinyshakespeare and pride_and_prejudice (``experiment=fractal_atlas``, one key per book)
via ``lhp atlas train-core``. Then for every book of the library:

- the exact text the core was trained on is written to ``<out>/books/<id>.txt`` and compressed
  with ``gzip -9``, ``bzip2 -9``, ``xz -9e`` (Python's gzip/bz2/lzma) and ``zstd -19``
  (``zstandard``); each is decompressed and checked;
- the core is written as fp16 and as int8 (per-row scales) safetensors (config and vocabulary
  in the header), the key as fp16 safetensors, and the text is range-coded (constriction) with
  the probabilities of the model *loaded back from those files*; the residual is then decoded
  with a model loaded afresh from the files and must give the identical text.

Sizes are the sizes of the files written. Bits per character:
``atlas = 8 (core / n_books + key + residual) / chars`` (the core shared by the books of the
library) and ``alone = 8 (core + key + residual) / chars`` (a library of this one book);
``ideal`` is sum(-log2 p) / chars of the same model without any coder overhead.
The last line is the figure: the atlas (int8 core) against the best general-purpose compressor.
Files go to ``--out`` (a directory; default ``logs/bench/atlas_compression_<time>``), the report
to ``<out>/report.json``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import time
from pathlib import Path
from typing import Any

import torch

from datamodules.book_coords import read_book
from experiments.bench import common
from lhp.errors import entry_point
from lit_models.atlas import (
    AtlasLibrary,
    core_state,
    decode_residual,
    encode_residual,
    load_core_file,
    quantize_int8,
    read_safetensors,
    save_core_file,
    save_key_file,
    text_sha256,
)
from lit_models.atlas_workflow import train_core

COMPRESSORS = ("gzip -9", "bzip2 -9", "xz -9e", "zstd -19")
COLUMNS = [("book", "book", ""), ("chars", "chars", ",d"), ("key_bytes", "key B", "d"),
           *((key, header, ".3f") for key, header in (
               ("residual_bpc_fp16", "resid fp16"), ("ideal_fp16", "ideal fp16"),
               ("atlas_fp16", "atlas fp16"), ("alone_fp16", "alone fp16"),
               ("residual_bpc_int8", "resid int8"), ("atlas_int8", "atlas int8"),
               ("alone_int8", "alone int8"), *((c, c) for c in COMPRESSORS)))]


def general_compressors(data: bytes) -> dict[str, int]:
    """Compressed sizes in bytes; each output is decompressed and checked."""
    import zstandard

    codecs = {
        "gzip -9": (lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress),
        "bzip2 -9": (lambda d: bz2.compress(d, 9), bz2.decompress),
        "xz -9e": (lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
        "zstd -19": (lambda d: zstandard.ZstdCompressor(level=19).compress(d),
                     lambda c: zstandard.ZstdDecompressor().decompress(c)),
    }
    sizes = {}
    for name, (compress, decompress) in codecs.items():
        packed = compress(data)
        if decompress(packed) != data:
            raise RuntimeError(f"{name} round trip failed")
        sizes[name] = len(packed)
    return sizes


def write_core_files(lib: AtlasLibrary, out: Path) -> dict[str, Path]:
    """fp16 and int8 versions of the library's core, with config and vocabulary in the header."""
    net, vocab = lib.load_core()
    config = lib.index()["core"]["config"]
    state = core_state(net)
    return {
        "fp16": save_core_file(out / "core_fp16.safetensors", {k: v.half() for k, v in state.items()},
                               config, vocab.chars),
        "int8": save_core_file(out / "core_int8.safetensors", quantize_int8(state), config, vocab.chars),
    }


def code_book(core_file: Path, key_file: Path, ids: torch.Tensor, residual_file: Path,
              batch_size: int) -> dict[str, Any]:
    """Encode with the model loaded from the files, decode with a fresh load, check identity."""
    net, _, _ = load_core_file(core_file)
    z = read_safetensors(key_file, "key file")[0]["z"].float()
    t0 = time.perf_counter()
    data, ideal_bits = encode_residual(net, ids, z=z, batch_size=batch_size)
    encode_s = time.perf_counter() - t0
    residual_file.write_bytes(data)
    fresh, _, _ = load_core_file(core_file)
    t0 = time.perf_counter()
    decoded = decode_residual(fresh, residual_file.read_bytes(),
                              z=read_safetensors(key_file, "key file")[0]["z"].float(),
                              batch_size=batch_size)
    decode_s = time.perf_counter() - t0
    if not torch.equal(decoded, ids):
        raise RuntimeError(f"{residual_file}: decoding did not give back the text "
                           f"({int((decoded != ids).sum())} symbols differ)")
    return {"residual": residual_file.stat().st_size, "ideal_bits": ideal_bits,
            "encode_s": encode_s, "decode_s": decode_s}


def run(lib: AtlasLibrary, out: Path, batch_size: int = 8192,
        report_to: Path | None = None) -> list[dict[str, Any]]:
    """Code every book of ``lib`` (files under ``out``); the report to ``report_to`` (default ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "books").mkdir(exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    (out / "residual").mkdir(exist_ok=True)
    cores = write_core_files(lib, out)
    core_bytes = {k: p.stat().st_size for k, p in cores.items()}
    _, vocab = lib.load_core()
    books = lib.books()
    rows = []
    for entry in common.progress(books, "coding books"):
        text = read_book(entry["source"], entry["n_chars"])
        if text_sha256(text) != entry["sha256"]:
            raise RuntimeError(f"{entry['source']}: text differs from the one in the library index")
        raw = text.encode("utf-8")
        book_file = out / "books" / f"{entry['book_id']}.txt"
        book_file.write_bytes(raw)
        ids = vocab.encode(text, "error", entry["source"])
        key_file = out / "keys" / f"{entry['book_id']}.fp16.safetensors"
        save_key_file(key_file, lib.load_key(entry["book_id"]), {}, dtype=torch.float16)
        n = len(text)
        row: dict[str, Any] = {"book": entry["title"], "chars": n, "bytes": len(raw),
                               "key_bytes": key_file.stat().st_size}
        for precision, core_file in cores.items():
            coded = code_book(core_file, key_file, ids,
                              out / "residual" / f"{entry['book_id']}.{precision}.bin", batch_size)
            row[f"residual_{precision}"] = coded["residual"]
            row[f"ideal_{precision}"] = coded["ideal_bits"] / n
            shared = core_bytes[precision] / len(books)
            row[f"atlas_{precision}"] = 8 * (shared + row["key_bytes"] + coded["residual"]) / n
            row[f"alone_{precision}"] = 8 * (core_bytes[precision] + row["key_bytes"] + coded["residual"]) / n
            row[f"residual_bpc_{precision}"] = 8 * coded["residual"] / n
            row[f"code_s_{precision}"] = coded["encode_s"] + coded["decode_s"]
        for name, size in general_compressors(raw).items():
            row[name] = 8 * size / n
        rows.append(row)
    summarize(rows, core_bytes, lib, out, report_to or out)
    return rows


def summarize(rows: list[dict[str, Any]], core_bytes: dict[str, int], lib: AtlasLibrary,
              out: Path, report_to: Path) -> None:
    """The table, and the pooled atlas (int8 core) against the best compressor as the last line."""
    core = lib.index()["core"]
    total = sum(r["chars"] for r in rows)

    def pooled(key: str) -> float:
        return sum(r[key] * r["chars"] for r in rows) / total

    best = min(COMPRESSORS, key=pooled)
    atlas = pooled("atlas_int8")
    verdict = "beats" if atlas < pooled(best) else "does NOT beat"
    print(f"\nlibrary {lib.root}: {core['params']:,} core params; core files fp16 "
          f"{core_bytes['fp16']:,} B, int8 {core_bytes['int8']:,} B, shared by {len(rows)} book(s); "
          f"files in {out}")
    print("bits per character (sizes of the files written; decoded back to the identical text)")
    common.report(rows, f"all {len(rows)} book(s), {total:,} chars: atlas (int8 core shared + keys + residual) "
                        f"{atlas:.3f} bpc (fp16 core: {pooled('atlas_fp16'):.3f}; ideal residual alone "
                        f"{pooled('ideal_fp16'):.3f}) vs {best} {pooled(best):.3f} bpc: the atlas {verdict} {best}",
                  report_to, columns=COLUMNS, meta={"library": str(lib.root), "core_bytes": core_bytes})


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__.split("\n\n")[0], overrides=True)
    parser.add_argument("--library", help="existing atlas library (default: train one)")
    parser.add_argument("--experiment", default="fractal_atlas",
                        help="experiment used to train the core when no --library is given")
    parser.add_argument("--batch-size", type=int, default=8192, help="positions per forward pass")
    args = common.parse_args(parser, argv)
    out = common.out_dir(args.out, "atlas_compression")
    if args.library:
        lib = AtlasLibrary(args.library)
    else:
        from experiments.utils import compose_config

        cfg = compose_config("train", [f"experiment={args.experiment}", *args.overrides], out / "train")
        lib, _ = train_core(out / "library", list(cfg.data.books), train_fn=common.train_run,
                            run_dir=out / "train", titles=list(cfg.data.titles or []) or None,
                            experiment=args.experiment, overrides=args.overrides)
    run(lib, out, args.batch_size, args.out)
    return 0


if __name__ == "__main__":
    main()
