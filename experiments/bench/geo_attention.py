"""Fisher-Rao attention vs PyTorch SDPA: forward + backward time, same shapes, same run.

    lhp bench geo_attention [--batch 4] [--heads 8] [--head-dim 64]
        [--seqs 128 512] [--repeats 10] [--warmup 3] [--out report.json]

Both sides start from the same q, k, v (B, H, T, 64) and run causal attention forward and
backward: GeoAttention maps q and k to square-rooted categorical distributions and runs
``GeoAttentionFunction`` (Fisher-Rao scores, fused backward); SDPA is
``F.scaled_dot_product_attention(is_causal=True)``. Median of ``--repeats`` timed iterations
after ``--warmup``; the sides alternate so neither profits from going second. The ratio
geo / SDPA at the longest sequence is the last line (goal: <= 1.5x).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from experiments.bench import common
from lhp.errors import entry_point
from lit_models.components.geo_attention import GeoAttentionFunction, sqrt_probs


def geo_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> None:
    GeoAttentionFunction.apply(sqrt_probs(q), sqrt_probs(k), v, gamma, None, 1e-6).sum().backward()


def sdpa_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> None:
    F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sides(sides: dict[str, Callable[[], None]], repeats: int, warmup: int,
               device: torch.device) -> dict[str, float]:
    """Median seconds per call of each side, calls interleaved."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            sides[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


@entry_point
def main(argv: list[str] | None = None) -> float:
    parser = common.bench_parser(__doc__.splitlines()[0], repeats=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = common.parse_args(parser, argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for seq in common.progress(args.seqs, "sequence lengths"):
        shape = (args.batch, args.heads, seq, args.head_dim)
        q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
        gamma = torch.ones(args.heads, device=device, requires_grad=True)
        med = time_sides({"geo": partial(geo_step, q, k, v, gamma),
                          "sdpa": partial(sdpa_step, q, k, v, gamma)},
                         args.repeats, args.warmup, device)
        rows.append({"seq": seq, "geo_ms": med["geo"] * 1e3, "sdpa_ms": med["sdpa"] * 1e3,
                     "ratio": med["geo"] / med["sdpa"]})
    ratio = rows[-1]["ratio"]
    common.report(rows, f"GeoAttention / SDPA at seq {args.seqs[-1]}: {ratio:.2f}x (goal <= 1.5x)", args.out,
                  columns=[("seq", "seq", "d"), ("geo_ms", "geo ms", ".2f"), ("sdpa_ms", "sdpa ms", ".2f"),
                           ("ratio", "geo/sdpa", ".2f")],
                  notes=[f"forward+backward, B={args.batch} H={args.heads} D={args.head_dim}; device={device} "
                         f"threads={torch.get_num_threads()} repeats={args.repeats}"], meta={"ratio": ratio})
    return ratio


if __name__ == "__main__":
    main()
