"""ONNX Runtime vs PyTorch on CPU: latency per generated token, int8 size and word perplexity.

The checkpoint (the WikiText-2 GPT) is exported with ``lhp export`` as ``onnx`` and
``onnx-int8`` (each checked against PyTorch by the exporter). Then, side by side in one process
(the machine is shared: compare the ratios):

* latency per generated token, greedy decoding of ``--tokens`` tokens after a ``--prompt``-token
  prompt with the KV cache (PyTorch ``generate`` with its cache; ONNX Runtime with the
  past-key/value model through the same ``generate``), with 1 and 2 threads, median of
  ``--repeats``;
* file sizes: fp32 and int8 ``model.onnx``;
* word-level validation perplexity of PyTorch, ONNX fp32 and ONNX int8, all through the platform's
  evaluation (``LanguageModel`` validation as in ``lhp evaluate``, the H2Q benchmark's
  ``Evaluator``; the ONNX models run behind ``OrtNet``).

``--quick``: few tokens, 2 validation batches, one repeat (the test runs it on a tiny checkpoint).
The last line is the figure.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from experiments.bench import common
from experiments.bench.h2q_pareto import Evaluator
from lhp.errors import UserError, entry_point
from lit_models.exporting.exporter import MODEL_FILE, PAST_FILE, export
from lit_models.exporting.onnx_models import OrtNet
from lit_models.generation import generate

COLUMNS = [("variant", "variant", ""), ("threads", "threads", "d"),
           ("ms_per_token", "ms / token", ".2f"), ("vs_torch", "speed-up vs PyTorch", ".2f"),
           ("mb", "model.onnx MB", ".2f"), ("word_ppl", "valid word ppl", ".3f")]


def _ms_per_token(net: Any, prompt: torch.Tensor, tokens: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(net, prompt, tokens, temperature=0, use_cache=True)
        times.append((time.perf_counter() - t0) / tokens * 1e3)
    return statistics.median(times)


def latency_rows(net: torch.nn.Module, dirs: dict[str, Path], threads: list[int], tokens: int,
                 prompt_len: int, repeats: int) -> list[dict[str, Any]]:
    """ms per generated token of PyTorch and each ONNX variant at each thread count."""
    prompt = torch.randint(0, net.config.vocab_size, (1, min(prompt_len, net.config.block_size - 1)),
                           generator=torch.Generator().manual_seed(0))
    before, rows = torch.get_num_threads(), []
    try:
        for n in threads:
            torch.set_num_threads(n)
            models = {"pytorch fp32": net}
            for variant, folder in dirs.items():
                models[variant] = OrtNet(folder / PAST_FILE, net.config, threads=n)
            for model in models.values():  # warm-up (allocations, ORT graph optimisation)
                generate(model, prompt, min(tokens, 4), temperature=0, use_cache=True)
            base = None
            for variant, model in models.items():
                ms = _ms_per_token(model, prompt, tokens, repeats)
                base = base or ms
                rows.append({"variant": variant, "threads": n, "ms_per_token": ms,
                             "vs_torch": base / ms})
    finally:
        torch.set_num_threads(before)
    return rows


def run(ckpt: Path, workdir: Path, threads: list[int], tokens: int, prompt_len: int,
        repeats: int, limit: int | None) -> list[dict[str, Any]]:
    dirs = {}
    for fmt, variant in (("onnx", "onnx fp32"), ("onnx-int8", "onnx int8")):
        dirs[variant] = workdir / fmt
        export(ckpt, dirs[variant], fmt, parity_tokens=min(tokens, 64))
    ev = Evaluator(ckpt, limit)
    net = ev.module.net
    rows = latency_rows(net, dirs, threads, tokens, prompt_len, repeats)
    quality = {"pytorch fp32": ev.word_ppl()}
    for variant, folder in dirs.items():
        ev.module.net = OrtNet(folder / MODEL_FILE, net.config)
        quality[variant] = ev.word_ppl()
    ev.module.net = net
    sizes = {v: (folder / MODEL_FILE).stat().st_size / 1e6 for v, folder in dirs.items()}
    for row in rows:
        row["mb"] = sizes.get(row["variant"])
        row["word_ppl"] = quality[row["variant"]]
    return rows


def headline(rows: list[dict[str, Any]]) -> str:
    def get(variant: str, threads: int) -> dict[str, Any]:
        return next(r for r in rows if r["variant"] == variant and r["threads"] == threads)

    parts = [f"{n} thread{'s' if n > 1 else ''}: ORT fp32 {get('onnx fp32', n)['vs_torch']:.2f}x, "
             f"int8 {get('onnx int8', n)['vs_torch']:.2f}x PyTorch's speed "
             f"({get('pytorch fp32', n)['ms_per_token']:.2f} ms/token)"
             for n in sorted({r["threads"] for r in rows})]
    fp32, int8 = get("onnx fp32", rows[0]["threads"]), get("onnx int8", rows[0]["threads"])
    return (f"export: int8 model.onnx {int8['mb']:.2f} MB vs fp32 {fp32['mb']:.2f} MB "
            f"({fp32['mb'] / int8['mb']:.1f}x smaller), valid word ppl {int8['word_ppl']:.2f} vs "
            f"{fp32['word_ppl']:.2f} ({100 * (int8['word_ppl'] / fp32['word_ppl'] - 1):+.2f} %); "
            + "; ".join(parts))


@entry_point
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = common.bench_parser(__doc__.split("\n")[0], repeats=3)
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="trained GPT checkpoint (default: newest gpt_wikitext2)")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per timing")
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--thread-counts", default="1,2", help="CPU threads to time, comma-separated")
    parser.add_argument("--limit-val-batches", type=int, default=None,
                        help="evaluate the first N validation batches only (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="8 tokens, 1 repeat, 2 validation batches (the test's mode)")
    args = common.parse_args(parser, argv)
    ckpt = args.ckpt or common.default_checkpoint()
    if not ckpt.exists():
        raise UserError(f"--ckpt {ckpt}: no such checkpoint")
    threads = [int(t) for t in args.thread_counts.split(",") if t.strip()]
    tokens, repeats, limit = args.tokens, args.repeats, args.limit_val_batches
    if args.quick:
        tokens, repeats, limit = 8, 1, 2
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        rows = run(ckpt, Path(tmp), threads, tokens, args.prompt, repeats, limit)
    common.report(rows, headline(rows), args.out, columns=COLUMNS,
                  notes=[f"checkpoint {ckpt}; {tokens} greedy tokens after a {args.prompt}-token "
                         f"prompt, KV cache, median of {repeats}; validation batches: "
                         f"{limit or 'all'}"],
                  meta={"checkpoint": str(ckpt), "tokens": tokens, "limit_val_batches": limit})
    return rows


if __name__ == "__main__":
    main()
