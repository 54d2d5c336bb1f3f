"""Do Betti events mark structure? A boundary study of the TCS claim, with two controls.

    lhp tcs-boundary --ckpt <trained .ckpt> [--seeds 0 1 2] [--out results.json]

(``python -m experiments.tcs_boundary ...`` is the same.)

Text: ``--segments`` (30) segments of about ``--segment-chars`` (2,000) characters, each cut at
line boundaries from a random place of one of four sources (the three books of
``<data>/books`` and WikiText-2 test), never the same source twice in a row, joined in order.
The true boundaries are the segment starts (29 for 30 segments).

Hidden states: ``StatefulEmbedder`` over the checkpoint (KV cache over the model's context,
eviction to half of it), layer ``--layer``, for every token of the text in stream order.

Detectors (positions in tokens), each predicting a set of boundary positions:

* ``betti``: ``StreamingAnalyzer`` (window ``--window``, analysis every ``--chunk`` tokens, H0
  over the window + H1 on the landmarks, scale ``auto``, the engine's defaults otherwise). An
  analysis with events predicts a boundary at its position minus ``window / 2`` (a new segment
  changes the window most when it fills half of it; fixed before looking at results).
  Score of a prediction: the summed magnitude of its events.
* ``betti_shuffled`` (control 1): the same analyzer, at the scale the ordered stream chose, on
  the same hidden states with the token order randomly permuted (seeded): what events look
  like when they cannot know the order.
* ``betti_q90`` / ``betti_q90_shuffled``: the same at a label-free calibrated scale, the 0.9
  quantile of the MST edge lengths of the stream's non-overlapping windows (``auto`` fixes the
  scale on the first window only, so it depends on which source comes first).
* ``cosine`` (control 2): a plain change-point detector: at every ``--chunk``-th token t, the
  cosine distance between the mean hidden state of ``[t - w, t)`` and of ``[t, t + w)``
  (w = window / 2); local maxima above mean + 2 std of that curve are predictions.

Scoring: a prediction within ``--tolerance`` tokens of a true boundary is a hit (one-to-one,
closest pairs first); precision = hits / predictions, recall = hits / boundaries, F1. Two
settings: ``threshold`` (the detectors' own rules above) and ``top-K`` (each detector's K
highest-scoring predictions, K = number of boundaries, ties broken at random, seeded), which
compares rankings at equal numbers of predictions. ``chance`` is the precision of predictions
placed uniformly at random: the fraction of token positions within the tolerance of a boundary.
The JSON written to ``--out`` holds the boundaries, every prediction and every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from experiments import REPO_ROOT
from experiments.utils import torch_threads
from lhp.errors import entry_point
from lit_models.embedder import StatefulEmbedder
from lit_models.topology import StreamingAnalyzer, compute_persistence

BOOKS = ("alice_in_wonderland.txt", "pride_and_prejudice.txt", "tinyshakespeare.txt")


def default_data_dir() -> Path:
    return Path(os.environ.get("LHP_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def load_sources(data_dir: Path) -> dict[str, str]:
    """The three books and WikiText-2 test, by short name."""
    paths = {Path(b).stem: data_dir / "books" / b for b in BOOKS}
    paths["wikitext2_test"] = data_dir / "wikitext-2" / "test.txt"
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing source files {missing} (expected the books and "
                                f"wikitext-2 of ../shared/data; set --data-dir)")
    return {name: p.read_text(encoding="utf-8") for name, p in paths.items()}


def interleave(sources: dict[str, str], n_segments: int, segment_chars: int,
               rng: np.random.Generator) -> tuple[str, list[int], list[str]]:
    """Text of ``n_segments`` segments (whole lines, about ``segment_chars`` characters each,
    from a random place, source != previous source); the start offsets of segments 1.. and the
    source of each segment."""
    names = sorted(sources)
    if len(names) < 2:
        raise ValueError("need at least two sources to alternate")
    parts, bounds, used, prev, pos = [], [], [], None, 0
    for _ in range(n_segments):
        name = str(rng.choice([n for n in names if n != prev]))
        src = sources[name]
        if len(src) < 2 * segment_chars:
            raise ValueError(f"source {name} has {len(src)} characters, fewer than "
                             f"2 x segment_chars = {2 * segment_chars}")
        start = int(rng.integers(0, len(src) - 2 * segment_chars))
        start = src.find("\n", start) + 1  # whole lines
        end = src.find("\n", start + segment_chars)
        end = len(src) if end < 0 else end + 1
        segment = src[start:end]
        if pos:
            bounds.append(pos)
        parts.append(segment)
        used.append(name)
        pos += len(segment)
        prev = name
    return "".join(parts), bounds, used


def embed(embedder: StatefulEmbedder, text: str, chunk_chars: int = 2000
          ) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states (n_tokens, D) float32 of ``text`` in stream order, and the character
    offset where each token starts."""
    embedder.reset()
    hidden, ids = [], []
    for i in range(0, len(text), chunk_chars):
        out = embedder.feed(text[i:i + chunk_chars])
        hidden.append(out.hidden.float())
        ids += out.ids
    out = embedder.flush()
    hidden.append(out.hidden.float())
    ids += out.ids
    counts = np.asarray(embedder.tokenizer.token_char_counts(), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts[np.asarray(ids)])[:-1]])
    return torch.cat(hidden).numpy(), starts


@dataclass
class Predictions:
    positions: np.ndarray  # token positions
    scores: np.ndarray


def betti_predictions(hidden: np.ndarray, window: int, chunk: int, landmarks: int,
                      scale: float | str) -> tuple[Predictions, dict]:
    analyzer = StreamingAnalyzer(window=window, chunk_points=chunk, max_latency_ms=math.inf,
                                 landmarks=landmarks, scale=scale, dim=1)
    by_pos: dict[int, float] = {}
    for i in range(0, len(hidden), chunk):
        for e in analyzer.push_batch(hidden[i:i + chunk]):
            by_pos[e.position] = by_pos.get(e.position, 0.0) + e.magnitude
    pos = np.asarray(sorted(by_pos), dtype=np.int64)
    stats = analyzer.stats()
    return (Predictions(pos - window // 2, np.asarray([by_pos[p] for p in pos], dtype=float)),
            {"windows": stats["windows_analysed"], "scale": stats["scale"],
             "latency_ms_p50": stats["latency_ms_p50"]})


def calibrated_scale(hidden: np.ndarray, window: int, quantile: float) -> float:
    """A label-free scale: the ``quantile`` of the H0 deaths (MST edge lengths) of the
    stream's non-overlapping windows. At q = 0.9 a window falls into about a tenth of its
    points' worth of components: cluster structure, not every point, not one blob."""
    deaths = [compute_persistence(hidden[i:i + window], max_dim=0, method="mst").finite(0)[:, 1]
              for i in range(0, len(hidden) - window + 1, window)]
    return float(np.quantile(np.concatenate(deaths), quantile))


def cosine_curve(hidden: np.ndarray, half: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance between the mean of ``[t - half, t)`` and of ``[t, t + half)``."""
    csum = np.concatenate([np.zeros((1, hidden.shape[1])), np.cumsum(hidden, axis=0)])
    ts = np.arange(half, len(hidden) - half + 1, step)
    left = (csum[ts] - csum[ts - half]) / half
    right = (csum[ts + half] - csum[ts]) / half
    cos = (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))
    return ts, 1.0 - cos


def cosine_predictions(hidden: np.ndarray, half: int, step: int,
                       z: float = 2.0) -> tuple[Predictions, Predictions]:
    """(peaks above mean + z std of the curve, all local maxima: the candidates for top-K)."""
    ts, d = cosine_curve(hidden, half, step)
    peak = np.r_[False, (d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:]), False]
    keep = peak & (d > d.mean() + z * d.std())
    return Predictions(ts[keep], d[keep]), Predictions(ts[peak], d[peak])


def top_k(pred: Predictions, k: int, rng: np.random.Generator) -> Predictions:
    """The ``k`` highest-scoring predictions (random tie-break)."""
    order = np.lexsort((rng.random(len(pred.scores)), -pred.scores))[:k]
    return Predictions(pred.positions[order], pred.scores[order])


def score(pred: np.ndarray, truth: np.ndarray, tol: int) -> dict[str, float]:
    """Precision, recall, F1 with one-to-one matching within ``tol`` (closest pairs first)."""
    pairs = sorted((abs(int(p) - int(t)), i, j) for i, p in enumerate(pred)
                   for j, t in enumerate(truth) if abs(int(p) - int(t)) <= tol)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    hits = len(used_p)
    precision = hits / len(pred) if len(pred) else 0.0
    recall = hits / len(truth) if len(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"predictions": int(len(pred)), "hits": hits, "precision": precision,
            "recall": recall, "f1": f1}


def chance_precision(truth: np.ndarray, n_tokens: int, tol: int) -> float:
    covered = np.zeros(n_tokens, dtype=bool)
    for t in truth:
        covered[max(0, t - tol): t + tol + 1] = True
    return float(covered.mean())


def study(embedder: StatefulEmbedder, sources: dict[str, str], seed: int, args) -> dict:
    rng = np.random.default_rng(seed)
    text, bounds_chars, used = interleave(sources, args.segments, args.segment_chars, rng)
    t0 = time.perf_counter()
    hidden, starts = embed(embedder, text)
    embed_s = time.perf_counter() - t0
    truth = np.searchsorted(starts, bounds_chars)  # first token starting at/after a boundary
    shuffled = hidden[rng.permutation(len(hidden))]
    t0 = time.perf_counter()
    preds, info = {}, {}
    scales = {"betti": args.scale, "betti_q90": calibrated_scale(hidden, args.window, 0.9)}
    for name, scale in scales.items():
        preds[name], info[name] = betti_predictions(hidden, args.window, args.chunk,
                                                    args.landmarks, scale)
        # the control gets the scale the ordered stream used (its own "auto" would differ)
        preds[f"{name}_shuffled"], info[f"{name}_shuffled"] = betti_predictions(
            shuffled, args.window, args.chunk, args.landmarks, info[name]["scale"])
    topo_s = time.perf_counter() - t0
    candidates = dict(preds)  # Betti: every analysis with events is a candidate
    preds["cosine"], candidates["cosine"] = cosine_predictions(hidden, args.window // 2,
                                                               args.chunk)
    k = len(truth)
    results = {}
    for name, p in preds.items():
        best = top_k(candidates[name], k, rng)
        results[name] = {"threshold": score(p.positions, truth, args.tolerance),
                         "top_k": score(best.positions, truth, args.tolerance)}
    return {"seed": seed, "characters": len(text), "tokens": len(hidden),
            "boundaries_chars": bounds_chars, "boundaries_tokens": truth.tolist(),
            "segment_sources": used, "embed_seconds": embed_s, "topology_seconds": topo_s,
            "chance_precision": chance_precision(truth, len(hidden), args.tolerance),
            "analyzer": info, "results": results,
            "predictions": {n: p.positions.tolist() for n, p in preds.items()}}


def table(runs: list[dict], tolerance: int) -> str:
    names = list(runs[0]["results"])
    lines = [f"{'detector':<20}{'setting':<11}{'pred':>7}{'hits':>6}{'precision':>11}"
             f"{'recall':>8}{'F1':>7}   F1 per seed"]
    for name in names:
        for setting in ("threshold", "top_k"):
            rs = [r["results"][name][setting] for r in runs]
            mean = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
            per_seed = " ".join(f"{r['f1']:.3f}" for r in rs)
            lines.append(f"{name:<20}{setting:<11}{mean['predictions']:>7.1f}{mean['hits']:>6.1f}"
                         f"{mean['precision']:>11.3f}{mean['recall']:>8.3f}{mean['f1']:>7.3f}"
                         f"   {per_seed}")
    chance = np.mean([r["chance_precision"] for r in runs])
    bounds = np.mean([len(r["boundaries_tokens"]) for r in runs])
    tokens = np.mean([r["tokens"] for r in runs])
    lines.append(f"({len(runs)} seed(s); {bounds:.0f} boundaries in {tokens:,.0f} tokens; "
                 f"tolerance +-{tolerance} tokens; chance precision {chance:.3f})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="platform checkpoint trained on real text")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--segments", type=int, default=30)
    p.add_argument("--segment-chars", type=int, default=2000)
    p.add_argument("--layer", default="-1", help="block index or module name")
    p.add_argument("--window", type=int, default=64, help="analyzer window (tokens)")
    p.add_argument("--chunk", type=int, default=16, help="analysis every N tokens")
    p.add_argument("--landmarks", type=int, default=64)
    p.add_argument("--scale", default="auto", help="Betti scale: a number or auto")
    p.add_argument("--tolerance", type=int, default=32, help="hit tolerance (tokens)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("tcs_boundary.json"))
    args = p.parse_args(argv)
    args.layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    args.scale = args.scale if args.scale == "auto" else float(args.scale)
    for key in ("segments", "segment_chars", "window", "chunk", "landmarks", "tolerance"):
        if getattr(args, key) < (2 if key == "segments" else 1):
            p.error(f"--{key.replace('_', '-')} must be a positive int (segments >= 2)")
    return args


@entry_point
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with torch_threads(args.threads):
        return _main(args)


def _main(args: argparse.Namespace) -> dict:
    sources = load_sources(args.data_dir)
    embedder = StatefulEmbedder.from_checkpoint(args.ckpt, layer=args.layer)
    runs = [study(embedder, sources, seed, args)
            for seed in track(args.seeds, description="boundary study seeds", transient=True,
                              disable=not sys.stdout.isatty())]
    out = {"ckpt": str(args.ckpt), "layer": embedder.layer_name,
           "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for r in runs:
        print(f"seed {r['seed']}: {r['tokens']:,} tokens ({r['characters']:,} chars), embedding "
              f"{r['embed_seconds']:.1f} s, topology {r['topology_seconds']:.1f} s; windows "
              f"{r['analyzer']['betti']['windows']}, scale auto {r['analyzer']['betti']['scale']:.3g}"
              f", q90 {r['analyzer']['betti_q90']['scale']:.3g}; results in {args.out}")
    print(table(runs, args.tolerance))
    return out


if __name__ == "__main__":
    main()
