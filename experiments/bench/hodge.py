"""Quantum walk exp(-i L_1 t) psi0 on Hodge Laplacians: Chebyshev vs eigendecomposition vs scipy
expm_multiply, error and time by size; the figure is the last line.

    lhp bench hodge [--quick] [--repeats 3] [--t 1.0] [--seed 0] [--out report.json]

Complexes: Rips complexes (up to triangles) of points sampled on a torus in R^3 (R = 2, r = 1)
at the scale that gives ~10 neighbours per point, sized to about 1k, 10k and 100k simplices
(vertices + edges + triangles; ``--quick``: 1k only); the walk runs on L_1 (edges x edges). ``psi0``: a random unit vector. Reference: dense
``eigh`` up to ``EIG_MAX_ROWS`` rows (beyond it dense eigh takes minutes: skipped),
then scipy's ``expm_multiply`` (Al-Mohy & Higham) is the reference. Errors are 2-norms of the
difference (psi0 has norm 1). Times: median of ``--repeats``; build = complex + L_1.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy.sparse.linalg import expm_multiply

from experiments.bench import common
from lhp.errors import entry_point
from lit_models.topology.hodge import hodge_laplacian, rips_complex
from lit_models.topology.quantum_walk import (
    chebyshev_terms,
    chebyshev_walk,
    eig_walk,
    gershgorin_bound,
)

EIG_MAX_ROWS = 5000
TOL_GOAL = 1e-8
NEIGHBOURS = 10
SIMPLICES_PER_POINT = 23  # measured: ~10 neighbours -> ~5 edges + ~17 triangles per point


def torus(n: int, rng: np.random.Generator, big: float = 2.0, small: float = 1.0) -> np.ndarray:
    """``n`` points on a torus in R^3 (angles uniform: denser on the inner side)."""
    u, v = rng.uniform(0, 2 * math.pi, size=(2, n))
    return np.stack([(big + small * np.cos(v)) * np.cos(u), (big + small * np.cos(v)) * np.sin(u),
                     small * np.sin(v)], axis=1)


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def case(target_simplices: int, t: float, repeats: int, rng: np.random.Generator) -> dict:
    n = max(target_simplices // SIMPLICES_PER_POINT, 20)
    scale = math.sqrt(NEIGHBOURS * 4 * math.pi ** 2 * 2.0 / (math.pi * n))  # area 4π²Rr
    t0 = time.perf_counter()
    cx = rips_complex(torus(n, rng), scale, max_dim=2)
    lap = hodge_laplacian(cx, 1)
    build = time.perf_counter() - t0
    psi0 = rng.normal(size=lap.shape[0])
    psi0 /= np.linalg.norm(psi0)
    cheb_s, cheb = timed(lambda: chebyshev_walk(lap, psi0, t), repeats)
    expm_s, expm = timed(lambda: expm_multiply(-1j * t * lap, psi0.astype(np.complex128)), repeats)
    row = {"points": n, "simplices": cx.size, "rows": lap.shape[0], "nnz": lap.nnz,
           "terms": len(chebyshev_terms(gershgorin_bound(lap) / 2 * t)), "build_s": build,
           "cheb_s": cheb_s, "expm_s": expm_s, "eig_s": None, "reference": "expm_multiply"}
    if lap.shape[0] <= EIG_MAX_ROWS:
        row["eig_s"], exact = timed(lambda: eig_walk(lap, psi0, t), 1)
        row["reference"] = "eigh"
        row["expm_err"] = float(np.linalg.norm(expm - exact))
    else:
        exact = expm
    row["cheb_err"] = float(np.linalg.norm(cheb - exact))
    row["norm_drift"] = abs(float(np.linalg.norm(cheb)) - 1.0)
    return row


@entry_point
def main(argv: list[str] | None = None) -> float:
    p = common.bench_parser(__doc__.split("\n")[0], repeats=3)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    p.add_argument("--t", type=float, default=1.0, help="walk time")
    p.add_argument("--seed", type=int, default=0)
    args = common.parse_args(p, argv)
    rng = np.random.default_rng(args.seed)
    sizes = (1000,) if args.quick else (1000, 10_000, 100_000)
    rows = [case(s, args.t, args.repeats, rng) for s in common.progress(sizes, "hodge sizes")]
    worst = max(r["cheb_err"] for r in rows)
    big = rows[-1]
    headline = (f"Chebyshev quantum walk (t = {args.t:g}) worst error {worst:.1e} (goal <= "
                f"{TOL_GOAL:.0e}); L_1 with {big['rows']:,} rows ({big['simplices']:,} "
                f"simplices): Chebyshev {big['cheb_s']:.3f} s vs expm_multiply "
                f"{big['expm_s']:.3f} s")
    common.report(rows, headline, args.out, columns=[
        ("simplices", "simplices", ","), ("rows", "L_1 rows", ","), ("nnz", "nnz", ","),
        ("terms", "Chebyshev terms", "d"), ("build_s", "build s", ".2f"),
        ("cheb_s", "Chebyshev s", ".4f"), ("expm_s", "expm_multiply s", ".4f"),
        ("eig_s", "eigh s", ".2f"), ("reference", "reference", ""),
        ("cheb_err", "Chebyshev error", ".1e"), ("expm_err", "expm_multiply error", ".1e"),
        ("norm_drift", "norm drift", ".1e")], meta={"t": args.t, "worst_error": worst})
    return worst


if __name__ == "__main__":
    main()
