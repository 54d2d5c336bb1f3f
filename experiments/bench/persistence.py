"""Topology engine vs direct GUDHI / ripser calls on the same points; the figure is the last line.

    lhp bench persistence [--quick] [--repeats 3] [--seed 0] [--out report.json]

Cases (issue 4): R^8 with 200/500/1000 points up to H1; 3-D alpha with 10k/100k points; H0 of
1,000,000 points in R^3 (goal < 20 s on 2 cores); H0 in R^64 exactly at 100,000 points and
approximately at 1,000,000 (the approximation's error against the exact answer measured on a
subsample: bottleneck distance between the H0 diagrams, relative error of total persistence);
and the streaming analyzer's per-window latency (10k-point window in R^3, 256 landmarks, H1 on
the landmarks by GUDHI collapse, the old default, vs ripser, the new one).

The Rips cases also time the engine's previous Rips path (ripser.py's private extension
``pyRipser.doRipsFiltrationDM`` on a condensed float32 distance vector, "legacy pyRipser"),
which giotto-ph's public threaded ``ripser_parallel`` replaced (issue 24).

``gpu_checks(device, tiny)`` yields the GPU suite's figures (``experiments/bench/gpu_suite.py``):
exact H0 of 1,000,000 points in R^3 by the torch grid Borůvka on ``device`` (v9 target < 1 s;
``tiny``: 10,000 points, seconds on a CPU) and its agreement with the CPU MST.

Direct calls are what a user would write: ``ripser.ripser(x, maxdim=1)``, GUDHI ``RipsComplex``
(full, and with ``collapse_edges`` + ``expansion``), GUDHI ``AlphaComplex``, each followed by
``compute_persistence`` and the intervals. Calls that cannot run at a size are listed as
"skipped (why)", not run. A call is timed once; when that run took under ``--min-repeat-s``
seconds it is repeated ``--repeats`` times in all and the median reported. The ratio per case is
engine seconds / fastest direct seconds (the issue's goal: <= 1.10).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gudhi
import numpy as np
import ripser
import torch
from pyRipser import doRipsFiltrationDM  # the engine's Rips path before issue 24, for timing
from scipy.spatial.distance import pdist

from experiments.bench import common
from lhp.errors import entry_point
from lit_models.topology import (
    StreamingAnalyzer,
    bottleneck,
    compute_persistence,
    euclidean_mst,
    euclidean_mst_torch,
    total_persistence,
)

GOAL_RATIO = 1.10
GOAL_H0_1M_S = 20.0


@dataclass
class Case:
    """One workload: the engine call and the direct calls it is compared with."""

    name: str
    engine: Callable[[], object]
    direct: dict[str, Callable[[], object] | str] = field(default_factory=dict)  # str: skipped
    seconds: float = math.nan  # the engine's, once run
    legacy_ratio: float | None = None  # engine / the previous Rips path, Rips cases only


def gudhi_rips(x: np.ndarray, max_dim: int, collapse: bool) -> list:
    st = gudhi.RipsComplex(points=x).create_simplex_tree(
        max_dimension=1 if collapse else max_dim + 1)
    if collapse:
        st.collapse_edges(nb_iterations=3)
        st.expansion(max_dim + 1)
    st.compute_persistence()
    return [st.persistence_intervals_in_dimension(d) for d in range(max_dim + 1)]


def gudhi_alpha(x: np.ndarray, max_dim: int) -> list:
    st = gudhi.AlphaComplex(points=x).create_simplex_tree()
    st.compute_persistence()
    return [st.persistence_intervals_in_dimension(d) for d in range(max_dim + 1)]


def legacy_pyripser(x: np.ndarray, max_dim: int) -> dict:
    """The engine's previous Rips call: ripser.py's extension on a condensed float32 vector."""
    return doRipsFiltrationDM(pdist(x).astype(np.float32), max_dim, math.inf, 2, False)


def gpu_checks(device: torch.device, tiny: bool) -> Iterator[tuple[str, float, str]]:
    """(name, value, unit) figures of the CUDA H0 path on ``device``: seconds for the exact
    MST of 1,000,000 uniform points in [0,1]^3 (``tiny``: 10,000), after a warm-up, and the
    largest difference of its sorted edge lengths from the CPU MST on 5,000 points (tiny: 2,000)."""
    n, n_check = (10_000, 2_000) if tiny else (1_000_000, 5_000)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, generator=gen, dtype=torch.float64).to(device)
    euclidean_mst_torch(x[:n_check])  # warm-up: CUDA context, kernels, allocator

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    _, lengths = euclidean_mst_torch(x)
    sync()
    seconds = time.perf_counter() - t0
    yield f"H0 exact MST {n:,} points R^3 on {device.type} (v9 target < 1 s at 1M)", seconds, "s"
    yield f"H0 MST {n:,} points: edges", float(len(lengths)), "edges"
    sub = x[:n_check]
    got = np.sort(euclidean_mst_torch(sub)[1].cpu().numpy())
    ref = np.sort(euclidean_mst(sub.cpu().numpy())[1])
    yield (f"H0 {device.type} vs CPU MST, {n_check:,} points: max |sorted length diff|",
           float(np.abs(got - ref).max()), "")


def timed(fn: Callable[[], object], repeats: int, min_repeat_s: float) -> tuple[float, str]:
    """Seconds of ``fn()``: one run, or the median of ``repeats`` when a run is short."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first >= min_repeat_s or repeats <= 1:
        return first, "1 run"
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), f"median of {repeats}"


def structured_cloud(n: int, dim: int, rng: np.random.Generator, clusters: int = 12,
                     intrinsic: int = 6, noise: float = 0.05) -> np.ndarray:
    """Gaussian clusters on one random ``intrinsic``-dim subspace of R^dim plus small noise:
    a stand-in for hidden states (low intrinsic dimension, clustered)."""
    basis = np.linalg.qr(rng.normal(size=(dim, intrinsic)))[0].T
    centers = 3.0 * rng.normal(size=(clusters, dim))
    labels = rng.integers(clusters, size=n)
    return centers[labels] + rng.normal(size=(n, intrinsic)) @ basis \
        + noise * rng.normal(size=(n, dim))


def build_cases(quick: bool, rng: np.random.Generator) -> list[Case]:
    cases = []
    for n in ((100,) if quick else (200, 500, 1000)):
        x = rng.normal(size=(n, 8))
        direct: dict[str, Callable[[], object] | str] = {
            "ripser.ripser": lambda x=x: ripser.ripser(x, maxdim=1),
            "legacy pyRipser (engine before)": lambda x=x: legacy_pyripser(x, 1)}
        direct["gudhi Rips"] = ((lambda x=x: gudhi_rips(x, 1, collapse=False)) if n <= 500 else
                                "skipped (full Rips of 1000 points in R^8: ~167M simplices)")
        direct["gudhi collapse+expansion"] = lambda x=x: gudhi_rips(x, 1, collapse=True)
        cases.append(Case(f"R^8 n={n} H0+H1", lambda x=x: compute_persistence(x, max_dim=1),
                          direct))
    for n in ((1000,) if quick else (10_000, 100_000)):
        x = rng.normal(size=(n, 3))
        cases.append(Case(f"3-D n={n:,} alpha H0+H1",
                          lambda x=x: compute_persistence(x, max_dim=1, method="alpha"),
                          {"gudhi AlphaComplex": lambda x=x: gudhi_alpha(x, 1),
                           "ripser.ripser": "skipped (Rips, not alpha; N^2/2 = "
                                            f"{n * (n - 1) // 2:.1e} edges)"}))
    n = 5000 if quick else 1_000_000
    x = rng.uniform(size=(n, 3))
    cases.append(Case(f"R^3 n={n:,} H0 (exact MST)",
                      lambda x=x: compute_persistence(x, max_dim=0),
                      {"gudhi AlphaComplex": "skipped (alpha of 1M points: ~10x the 100k "
                                             "case, ~10 GB)" if n > 100_000 else
                       (lambda x=x: gudhi_alpha(x, 0)),
                       "ripser.ripser": f"skipped (dense distances: {n * (n - 1) // 2:.1e} "
                                        "entries)"}))
    return cases


def high_dim_cases(quick: bool, rng: np.random.Generator) -> tuple[list[Case], dict]:
    n_exact, n_approx, n_sub = (600, 3000, 800) if quick else (100_000, 1_000_000, 20_000)
    x_exact = structured_cloud(n_exact, 64, rng)
    x_approx = structured_cloud(n_approx, 64, rng)
    skip = "skipped (ripser / GUDHI Rips need all N^2/2 = {:.1e} edges)"
    cases = [
        Case(f"R^64 n={n_exact:,} H0 exact",
             lambda: compute_persistence(x_exact, max_dim=0, method="mst", exact=True),
             {"ripser.ripser": skip.format(n_exact * (n_exact - 1) / 2),
              "gudhi Rips": skip.format(n_exact * (n_exact - 1) / 2)} if n_exact > 20_000 else
             {"ripser.ripser": lambda: ripser.ripser(x_exact, maxdim=0)}),
        Case(f"R^64 n={n_approx:,} H0 approximate",
             lambda: compute_persistence(x_approx, max_dim=0, method="mst", exact=False),
             {"ripser.ripser": skip.format(n_approx * (n_approx - 1) / 2)}),
    ]
    return cases, {"n_sub": n_sub, "clouds": {
        "structured (12 clusters, intrinsic dim 6)": x_approx[:n_sub],
        "isotropic Gaussian (worst case)": rng.normal(size=(n_sub, 64))}}


def approximation_error(clouds: dict[str, np.ndarray]) -> list[str]:
    """Approximate vs exact H0 on clouds small enough for the exact answer."""
    lines = []
    for name, x in clouds.items():
        exact = compute_persistence(x, max_dim=0, method="mst", exact=True)
        approx = compute_persistence(x, max_dim=0, method="mst", exact=False)
        tp_e, tp_a = total_persistence(exact, 0), total_persistence(approx, 0)
        upper = bool((np.sort(approx.finite(0)[:, 1]) >= np.sort(exact.finite(0)[:, 1])
                      - 1e-12).all())
        lines.append(f"  {name}, n={len(x):,}: bottleneck(H0 approx, H0 exact) = "
                     f"{bottleneck(exact, approx, 0):.4g} (exact deaths: median "
                     f"{np.median(exact.finite(0)[:, 1]):.4g}, max "
                     f"{exact.finite(0)[:, 1].max():.4g}); total persistence rel. error "
                     f"{(tp_a - tp_e) / tp_e:+.2%}; deaths are upper bounds: {upper}")
    return lines


def streaming_latency(quick: bool, rng: np.random.Generator) -> list[str]:
    window, chunk, total, landmarks = (500, 250, 1500, 64) if quick else (10_000, 1000, 30_000,
                                                                           256)
    x = rng.normal(size=(total, 3))
    lines = []
    for h1 in ("collapse", "ripser"):
        a = StreamingAnalyzer(window=window, chunk_points=chunk, max_latency_ms=math.inf,
                              landmarks=landmarks, h1_method=h1)
        a.push_batch(x)
        s = a.stats()
        lines.append(f"  streaming R^3 window={window:,} chunk={chunk} landmarks={landmarks} H0+H1 "
                     f"h1_method={h1}: {s['windows_analysed']} windows, latency p50 "
                     f"{s['latency_ms_p50']:.0f} ms, p95 {s['latency_ms_p95']:.0f} ms, "
                     f"max {s['latency_ms_max']:.0f} ms")
    return lines


def run_case(case: Case, repeats: int, min_repeat_s: float) -> tuple[list[str], float | None]:
    diagram = case.engine()
    label = f"engine ({diagram.method}{', approximate' if diagram.approximate else ''})"
    engine_s, how = timed(case.engine, repeats, min_repeat_s)
    rows = [f"{case.name:<34} {label:<34} {engine_s:>9.3f}  {how}"]
    best = math.inf
    for name, call in case.direct.items():
        if isinstance(call, str):
            rows.append(f"{'':<34} {name:<34} {'-':>9}  {call}")
            continue
        s, how = timed(call, repeats, min_repeat_s)
        best = min(best, s)
        rows.append(f"{'':<34} {name:<34} {s:>9.3f}  {how}")
        if name.startswith("legacy"):
            case.legacy_ratio = engine_s / s
    ratio = engine_s / best if math.isfinite(best) else None
    rows.append(f"{'':<34} {'engine / fastest direct':<34} "
                f"{(f'{ratio:.2f}' if ratio is not None else 'n/a'):>9}")
    if case.legacy_ratio is not None:
        rows.append(f"{'':<34} {'giotto-ph engine / legacy pyRipser':<34} "
                    f"{case.legacy_ratio:>9.2f}")
    case.seconds = engine_s
    return rows, ratio


@entry_point
def main(argv: list[str] | None = None) -> float:
    p = common.bench_parser(__doc__.split("\n")[0], repeats=3)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    p.add_argument("--min-repeat-s", type=float, default=2.0,
                   help="calls whose first run is shorter than this are repeated")
    p.add_argument("--seed", type=int, default=0)
    args = common.parse_args(p, argv)
    rng = np.random.default_rng(args.seed)
    cases = build_cases(args.quick, rng)
    hd_cases, err_setup = high_dim_cases(args.quick, rng)
    cases += hd_cases
    print(f"{'case':<34} {'call':<34} {'seconds':>9}  note")
    rows: list[dict] = []
    for case in common.progress(cases, "persistence cases"):
        lines, ratio = run_case(case, args.repeats, args.min_repeat_s)
        print("\n".join(lines), flush=True)
        rows.append({"case": case.name, "engine_s": case.seconds, "ratio": ratio,
                     "engine_over_legacy": case.legacy_ratio})
    h0_case = next(c for c in cases if c.name.startswith("R^3 n="))
    worst, where = max((r["ratio"], r["case"]) for r in rows if r["ratio"] is not None)
    common.report(rows, f"worst engine/fastest-direct ratio: {worst:.2f} ({where}; goal <= {GOAL_RATIO:.2f})",
                  args.out, notes=[
                      f"H0 approximation error (subsample of {err_setup['n_sub']:,} points, R^64):",
                      *approximation_error(err_setup["clouds"]), *streaming_latency(args.quick, rng),
                      f"exact H0 of {h0_case.name.split()[1]} points in R^3: {h0_case.seconds:.2f} s "
                      f"(goal < {GOAL_H0_1M_S:.0f} s for 1,000,000)"], meta={"worst_ratio": worst})
    return worst


if __name__ == "__main__":
    main()
