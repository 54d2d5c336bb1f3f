"""The 3-tier topology cache: latency per tier, the Bloom filter's effect on misses, and the hit
rate of ``tcs_stream`` over a book read twice; the figure is the last line.

    lhp bench topology_cache [--quick] [--ckpt PATH] [--book PATH] [--rows 5000] [--out DIR]

1. Tiers: a disk tier pre-filled with ``--rows`` diagrams of streaming-window size (H0: 999
   bars, H1: 60), then per-lookup latency of memory hits, disk hits and misses, each measured
   with and without the Bloom filter in alternating rounds (median of the rounds), and the
   computation a miss costs (one real window: exact H0 + landmark H1).
2. ``tcs_stream`` reads the book twice, as two runs sharing one cache file: the first run fills
   it, the second (a fresh process state: empty memory tier) should be answered from disk.
   ``--quick`` trains a 4-step tiny GPT here and streams the book's first 4,000 characters;
   otherwise ``--ckpt`` (default: the newest gpt_wikitext2 checkpoint) and the whole book.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import REPO_ROOT
from experiments.bench import common
from lhp.errors import UserError, entry_point
from lit_models.topology import Diagram, StreamingAnalyzer, TopologyCache
from lit_models.topology.cache import cache_key, engine_version

DEFAULT_BOOK = "alice_in_wonderland.txt"
PARAMS = {"query": "bench"}


def default_book() -> Path:
    """The Gutenberg book of ``$LHP_DATA_ROOT`` (default ``../shared/data``), see SOURCES.md."""
    root = Path(os.environ.get("LHP_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
    return root / "books" / DEFAULT_BOOK


def synthetic_diagram(rng: np.random.Generator, n: int = 1000, loops: int = 60) -> Diagram:
    h0 = np.column_stack([np.zeros(n), np.append(np.sort(rng.uniform(size=n - 1)), np.inf)])
    b = rng.uniform(size=loops)
    return Diagram({0: h0, 1: np.column_stack([b, b + rng.uniform(size=loops)])}, max_dim=1,
                   method="mst+landmarks", n_points=n)


def _per_lookup_us(cache: TopologyCache, keys: list[bytes]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        cache.get(k)
    return (time.perf_counter() - t0) / len(keys) * 1e6


def tier_latency(path: Path, rows: int, lookups: int, rounds: int,
                 rng: np.random.Generator) -> list[dict]:
    """Per-lookup microseconds of memory hits, disk hits and misses, Bloom on and off."""
    stored = [rng.bytes(16) for _ in range(rows)]
    with TopologyCache(path, memory_items=0, bloom=False) as filler:
        diagram = synthetic_diagram(rng)
        for k in stored:
            filler.put(k, diagram)
    absent = [rng.bytes(16) for _ in range(lookups)]
    present = [stored[i] for i in rng.choice(rows, size=min(lookups, rows), replace=False)]
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(rounds):  # opening: the Bloom filter is built from every stored key
        for bloom in (True, False):
            t0 = time.perf_counter()
            TopologyCache(path, memory_items=0, bloom=bloom).close()
            times.setdefault(("open (whole cache)", bloom), []).append(
                (time.perf_counter() - t0) * 1e6)
    caches = {True: TopologyCache(path, memory_items=0, bloom=True),
              False: TopologyCache(path, memory_items=0, bloom=False)}
    for _ in range(rounds):  # alternate the two sides so machine noise hits both alike
        for bloom, cache in caches.items():
            times.setdefault(("miss", bloom), []).append(_per_lookup_us(cache, absent))
            times.setdefault(("disk hit", bloom), []).append(_per_lookup_us(cache, present))
    memory = TopologyCache(None, memory_items=len(present))
    for k in present:
        memory.put(k, diagram)
    mem_us = statistics.median(_per_lookup_us(memory, present) for _ in range(rounds))
    for cache in caches.values():
        cache.close()
    out = [{"tier": "memory hit", "bloom": "-", "us": mem_us}]
    out += [{"tier": tier, "bloom": "on" if bloom else "off", "us": statistics.median(v)}
            for (tier, bloom), v in times.items()]
    return out


def window_costs(quick: bool, rng: np.random.Generator) -> tuple[float, float]:
    """(ms to hash one streaming window, ms to compute its diagram) for a tcs_stream-sized
    window: 1000 hidden states of width 64 (quick: 250 x 16)."""
    n, d = (250, 16) if quick else (1000, 64)
    x = rng.normal(size=(3 * n, d))
    version = engine_version()
    t0 = time.perf_counter()
    for _ in range(20):
        cache_key(x[:n], PARAMS, version)
    key_ms = (time.perf_counter() - t0) / 20 * 1000
    a = StreamingAnalyzer(window=n, chunk_points=n, max_latency_ms=float("inf"), landmarks=128,
                          h1_method="collapse")  # tcs_stream's analyser settings
    a.push_batch(x)  # three windows: the median is a warm one
    return key_ms, a.stats()["latency_ms_p50"]


def stream_twice(ckpt: Path | None, book: Path, quick: bool, work: Path) -> list[dict]:
    """Two tcs_stream runs over ``book`` sharing one cache file; their summaries' cache rows."""
    from experiments.tcs_stream import tcs_stream
    from experiments.utils import compose_config

    if ckpt is None:  # quick: a tiny model trained here
        common.train_run(["experiment=gpt_wikitext2_tiny", "trainer.max_steps=4", "test=false",
                          "logger=csv", "trainer.limit_val_batches=1", "extras.print_config=false",
                          f"paths.data_dir={work / 'data'}", f"paths.log_dir={work / 'logs'}"],
                         work / "train")
        ckpt = work / "train" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={ckpt}", f"text_path={book}", "logger=csv", "num_threads=1",
                 f"cache.path={work / 'topology_cache.db'}", "print_events=0",
                 f"paths.log_dir={work / 'logs'}", "extras.print_config=false"]
    if quick:
        overrides += ["max_chars=4000", "analyzer.window=128", "analyzer.chunk_points=32",
                      "analyzer.landmarks=32"]
    rows = []
    for read in (1, 2):
        summary, _ = tcs_stream(compose_config("tcs_stream", overrides, work / f"read{read}"))
        rows.append({"read": read, **{k: summary[k] for k in (
            "tokens", "windows_analysed", "topology_seconds", "cache_hit_rate",
            "cache_memory_hits", "cache_disk_hits", "cache_misses", "cache_ms_disk_hit",
            "cache_ms_miss", "cache_ms_compute", "cache_ms_key")}})
    return rows


@entry_point
def main(argv: list[str] | None = None) -> float:
    p = common.bench_parser(__doc__.split("\n")[0], repeats=None)
    p.add_argument("--quick", action="store_true", help="small sizes and a tiny model trained here")
    p.add_argument("--ckpt", type=Path, default=None, help="model for tcs_stream (default: the "
                   "newest gpt_wikitext2 checkpoint; --quick: a tiny one trained here)")
    p.add_argument("--book", type=Path, default=None,
                   help=f"text read twice (default: $LHP_DATA_ROOT/books/{DEFAULT_BOOK}, "
                        "LHP_DATA_ROOT defaulting to ../shared/data)")
    p.add_argument("--rows", type=int, default=None, help="diagrams in the disk tier (5000)")
    p.add_argument("--rounds", type=int, default=7, help="alternated timing rounds")
    p.add_argument("--seed", type=int, default=0)
    args = common.parse_args(p, argv)
    rng = np.random.default_rng(args.seed)
    rows_n = args.rows or (300 if args.quick else 5000)
    book = args.book or default_book()
    if not book.is_file():
        raise UserError(f"--book {book}: no such file")
    ckpt = args.ckpt if args.ckpt or args.quick else common.default_checkpoint()
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"--ckpt {ckpt}: no such checkpoint file")
    with tempfile.TemporaryDirectory(prefix="bench_topology_cache_") as tmp:
        work = Path(tmp)
        tiers = tier_latency(work / "tiers.db", rows_n, 200 if args.quick else 2000,
                             3 if args.quick else args.rounds, rng)
        key_ms, compute_ms = window_costs(args.quick, rng)
        reads = stream_twice(ckpt, book, args.quick, work)
    us = {(r["tier"], r["bloom"]): r["us"] for r in tiers}
    bloom_gain = us[("miss", "off")] - us[("miss", "on")]
    open_extra = us[("open (whole cache)", "on")] - us[("open (whole cache)", "off")]
    print(common.table(tiers, [("tier", "lookup", ""), ("bloom", "Bloom filter", ""),
                               ("us", "us per lookup", ".1f")]))
    print()
    print(common.table(reads, [("read", "read", ""), ("tokens", "tokens", ","),
                               ("windows_analysed", "windows", ""),
                               ("topology_seconds", "topology s", ".2f"),
                               ("cache_hit_rate", "hit rate", ".1%"),
                               ("cache_disk_hits", "disk hits", ""), ("cache_misses", "misses", ""),
                               ("cache_ms_disk_hit", "disk hit ms", ".3f"),
                               ("cache_ms_compute", "compute ms", ".1f")]))
    second = reads[-1]
    common.report(
        [*tiers, *reads],
        f"tcs_stream over {book.name} read twice: hit rate {second['cache_hit_rate']:.1%} on the "
        f"second read (first {reads[0]['cache_hit_rate']:.1%}); topology "
        f"{reads[0]['topology_seconds']:.2f} s -> {second['topology_seconds']:.2f} s",
        args.out, notes=[
            f"disk tier of {rows_n:,} diagrams: a miss costs {us[('miss', 'off')]:.1f} us without "
            f"the Bloom filter, {us[('miss', 'on')]:.1f} us with it ({bloom_gain:+.1f} us saved per "
            f"miss); a disk hit {us[('disk hit', 'off')]:.1f} us, a memory hit "
            f"{us[('memory hit', '-')]:.1f} us; opening costs "
            f"{us[('open (whole cache)', 'on')] / 1000:.1f} ms with the Bloom filter, "
            f"{us[('open (whole cache)', 'off')] / 1000:.1f} ms without: break-even after "
            f"{open_extra / max(bloom_gain, 1e-9):,.0f} misses per open",
            f"per window: hashing {key_ms:.3f} ms, computing the diagram {compute_ms:.1f} ms "
            f"(the Bloom saving is {bloom_gain / 1000 / compute_ms:.2e} of a miss's total cost)"],
        meta={"bloom_saving_us": bloom_gain, "second_read_hit_rate": second["cache_hit_rate"]})
    return second["cache_hit_rate"]


if __name__ == "__main__":
    main()
