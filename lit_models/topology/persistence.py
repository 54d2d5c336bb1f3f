"""Persistence diagrams of point clouds (torch or numpy, shape (N, D), any D) with GUDHI/ripser.

Methods and their scale (the x-axis of the diagram):

* ``"ripser"``: exact Vietoris-Rips with Ripser's algorithm through giotto-ph's public,
  threaded ``gph.ripser_parallel`` (``giotto-ph==0.2.4``, C++; threads for H1 and above:
  ``torch.get_num_threads()``). It replaced a call into ripser.py's private extension
  (``pyRipser.doRipsFiltrationDM``) and gives the same diagrams (tested); ``lhp bench
  persistence`` times both. The fastest Rips here (R^8, H0+H1, niced beside a training run:
  200 points 0.02 s, 1000 points 0.7 s, 2000 points 4 s; GUDHI "rips" 0.45 s / infeasible,
  "collapse" 0.05 s at 200 points, 14.6 s at 1000). Same filtration and diagram as
  ``"rips"``: Ripser works in float32, so every value it reports is mapped back to the
  float64 edge length it came from (a Rips value *is* an edge length); the result equals
  GUDHI's unless two distinct edge lengths round to the same float32 (then it is off by < 1
  float32 ulp, ~6e-8 relative). Distances are computed here in float64 (``pdist``) and passed
  as a precomputed matrix, so a finite ``max_edge_length`` is decided in float64 as GUDHI does.
* ``"rips"``: exact Vietoris-Rips with GUDHI. Filtration value of a simplex = its longest edge
  (Euclidean length, GUDHI's convention, *not* half of it). Cost explodes with N (R^8, H0+H1:
  200 points 0.45-0.7 s, 500 points 20 s, 1000 points infeasible), hence small clouds only.
* ``"collapse"``: the same Rips diagram, computed on GUDHI's 1-skeleton after edge collapses
  (``collapse_edges``) and ``expansion(max_dim + 1)``; exact, faster than "rips" for medium N
  (R^8 1000 points: 14.6 s).
* ``"alpha"``: GUDHI's AlphaComplex, for D <= 3 (Delaunay-based, so cheap: 3-D 10k points
  0.8 s). GUDHI's filtration values are *squared* radii r^2; they are reported as ball
  diameters 2 r so that an edge enters at its length, as in Rips. H0 is then identical to Rips
  H0 (the Euclidean MST is a subgraph of the Delaunay graph and its edges enter at their
  length). Higher dimensions are *not* on the Rips scale even after the conversion: alpha is
  the Cech filtration (a triangle enters at its circumscribed diameter, not its longest edge),
  so loops die later (a circle of radius R: Rips death ~ sqrt(3) R, alpha death 2 R). Cech and
  Rips interleave: Cech(t) <= Rips(t) <= Cech(t * sqrt(2 D / (D + 1))).
* ``"mst"``: H0 only, from a Euclidean minimum spanning tree (``mst.euclidean_mst``): exact
  kd-tree Borůvka for D <= 10, exact chunked brute force above (float32 matmuls, certified,
  float64 re-check). ``exact=False`` (or ``"auto"`` beyond ``AUTO_MST_EXACT_MAX_POINTS_HIGH_DIM``
  points in high D) computes an approximate tree (k-NN graph, in high D with candidates from a
  PCA projection) and marks the diagram ``approximate=True``: its sorted deaths are elementwise
  upper bounds of the exact ones. When CUDA is present, exact H0 of D <= 3 clouds with at
  least ``CUDA_H0_MIN_POINTS`` points runs on the GPU instead (``mst.euclidean_mst_torch``: the
  same certified Borůvka on a uniform grid, exact, tested equal to the CPU tree); see
  ``h0_device``.

``"auto"``: H0 only -> mst; N <= ``AUTO_RIPS_MAX_POINTS`` -> ripser; D <= 3 and N <=
``AUTO_ALPHA_MAX_POINTS`` -> alpha; N <= ``AUTO_RIPSER_MAX_POINTS`` (``AUTO_RIPSER_MAX_POINTS_H2``
when ``max_dim`` >= 2) -> ripser; beyond, mst with dimensions >= 1 dropped (a
``RuntimeWarning``, ``Diagram.max_dim`` = 0 and a note). Caution: auto changes the filtration
with N (alpha is not Rips above H0); compare diagrams of the same ``method``.

Conventions: H0 always has N-1 finite bars (zero-length ones from duplicate points included)
and one infinite bar born at 0, unless ``max_edge_length`` is finite (longer merges then never
happen: those bars become infinite). In dimensions >= 1 zero-length bars are dropped (a simplex
that fills a cycle at the scale it appears is not a feature). Coefficients in Z/2.
Empty cloud: empty diagram (no bars, not even the infinite one). One point: one bar (0, inf).
"""

from __future__ import annotations

import math
import warnings

import gudhi
import numpy as np
import torch
from gph import ripser_parallel
from scipy.spatial.distance import pdist, squareform

from lit_models.topology.diagrams import Diagram, empty_diagram
from lit_models.topology.mst import GRID_MAX_DIM, KDTREE_MAX_DIM, euclidean_mst, euclidean_mst_torch

METHODS = ("auto", "ripser", "rips", "collapse", "alpha", "mst")
AUTO_RIPS_MAX_POINTS = 150  # below this, Rips (ripser) even for D <= 3: exact Rips is cheap
AUTO_ALPHA_MAX_POINTS = 50_000  # 3-D: 10k points 0.8 s, 100k 16 s
AUTO_RIPSER_MAX_POINTS = 2000  # ripser H0+H1: R^3/R^8/R^64 2000 points 2.8/4/4 s
AUTO_RIPSER_MAX_POINTS_H2 = 300  # ripser up to H2, R^8: 200 points 0.45 s, 300 points 2.7 s
MST_VIA_RIPSER_MAX_POINTS = 2000  # exact H0, D > 10: ripser up to here (R^64 600 pts: 4x faster)
AUTO_MST_EXACT_MAX_POINTS_HIGH_DIM = 20_000  # D > 10: exact brute force is O(N^2 D)
COEFF_FIELD = 2
COLLAPSE_ITERATIONS = 3  # more passes collapse more edges; the diagram is exact either way
CUDA_H0_MIN_POINTS = 20_000  # below this the CPU kd-tree MST takes milliseconds anyway


def as_numpy_points(points: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, D) float64 numpy copy of ``points``; ValueError on a wrong shape, NaN or inf."""
    if isinstance(points, torch.Tensor):
        points = points.detach().to("cpu", torch.float64).numpy()
    try:
        x = np.asarray(points, dtype=np.float64)
    except (ValueError, TypeError) as err:  # ragged rows (mismatched dimensions), non-numbers
        raise ValueError(f"points must be a 2-D (N, D) array of numbers with one D for all "
                         f"rows: {err}") from err
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if x.shape[0] > 0 and x.shape[1] == 0:
        raise ValueError("points have dimension D = 0; expected (N, D) with D >= 1")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        kind = "NaN" if np.isnan(x).any() else "inf"
        raise ValueError(f"points contain {kind} (first non-finite value in row {row})")
    return x


def h0_device(n_points: int, dim: int, exact: bool) -> str:
    """Where exact H0 (method "mst") runs: "cuda" when CUDA is present, D <= 3 and N >=
    ``CUDA_H0_MIN_POINTS``, else "cpu"."""
    big = n_points >= CUDA_H0_MIN_POINTS and dim <= GRID_MAX_DIM and exact
    return "cuda" if big and torch.cuda.is_available() else "cpu"


def choose_method(n_points: int, dim: int, max_dim: int) -> str:
    """The method ``"auto"`` picks for a cloud of ``n_points`` points in R^``dim``."""
    if max_dim == 0:
        return "mst"
    if n_points <= AUTO_RIPS_MAX_POINTS:
        return "ripser"
    if dim <= 3 and n_points <= AUTO_ALPHA_MAX_POINTS:
        return "alpha"
    if n_points <= (AUTO_RIPSER_MAX_POINTS if max_dim <= 1 else AUTO_RIPSER_MAX_POINTS_H2):
        return "ripser"
    return "mst"


def compute_persistence(points: torch.Tensor | np.ndarray, max_dim: int = 1,
                        method: str = "auto", max_edge_length: float = math.inf,
                        exact: bool | None = None) -> Diagram:
    """Persistence diagram of the cloud ``points`` (N, D) in dimensions 0..``max_dim``.

    ``method``: one of ``METHODS`` (see the module docstring). ``exact`` (mst only): None picks
    exact unless D > 10 and N > ``AUTO_MST_EXACT_MAX_POINTS_HIGH_DIM``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_dim < 0:
        raise ValueError(f"max_dim must be >= 0, got {max_dim}")
    if not max_edge_length > 0:
        raise ValueError(f"max_edge_length must be > 0, got {max_edge_length}")
    x = as_numpy_points(points)
    n, dim = x.shape
    notes: list[str] = []
    if method == "auto":
        method = choose_method(n, dim, max_dim)
        if method == "mst" and max_dim > 0:
            msg = (f"auto: {n} points in R^{dim} is beyond the Rips/alpha limits; computed H0 "
                   f"only (exact MST), dimensions 1..{max_dim} dropped")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            notes.append(msg)
            max_dim = 0
    elif method == "mst" and max_dim > 0:
        raise ValueError(f"method 'mst' computes H0 only; pass max_dim=0 (got {max_dim})")
    elif method == "alpha" and dim > 3:
        raise ValueError(f"method 'alpha' is for D <= 3 (Delaunay cost grows fast), got D={dim}")
    if n == 0:
        return empty_diagram(max_dim, method=method)
    if n == 1:
        return Diagram({0: [[0.0, math.inf]]}, max_dim=max_dim, method=method, n_points=1,
                       notes=tuple(notes))
    if method == "mst":
        if exact is None:
            exact = dim <= KDTREE_MAX_DIM or n <= AUTO_MST_EXACT_MAX_POINTS_HIGH_DIM
        if exact and dim > KDTREE_MAX_DIM and n <= MST_VIA_RIPSER_MAX_POINTS:
            # small high-D cloud: ripser's union-find over all edges beats the Boruvka oracle
            return Diagram({0: _ripser_intervals(x, 0, max_edge_length)[0]}, max_dim=0,
                           method="mst", n_points=n, notes=tuple(notes))
        if h0_device(n, dim, exact) == "cuda":
            lengths = euclidean_mst_torch(torch.from_numpy(x).cuda())[1].cpu().numpy()
            notes.append("exact H0 on CUDA (grid Borůvka, mst.euclidean_mst_torch)")
        else:
            _, lengths = euclidean_mst(x, exact=exact)
        deaths = np.where(lengths <= max_edge_length, lengths, math.inf)
        h0 = np.column_stack([np.zeros(n), np.append(np.sort(deaths), math.inf)])
        if not exact:
            how = ("approximate k-NN graph (candidates from a PCA projection)"
                   if dim > KDTREE_MAX_DIM else "k-NN graph")
            notes.append(f"approximate H0: MST of the {how}; sorted deaths are elementwise "
                         "upper bounds of the exact ones")
        return Diagram({0: h0}, max_dim=0, method="mst", approximate=not exact, n_points=n,
                       notes=tuple(notes))
    if method == "ripser":
        return Diagram(_ripser_intervals(x, max_dim, max_edge_length), max_dim=max_dim,
                       method=method, n_points=n, notes=tuple(notes))
    if method == "alpha":
        st = _alpha_simplex_tree(x, max_dim, max_edge_length)
    else:
        st = gudhi.RipsComplex(points=x, max_edge_length=max_edge_length).create_simplex_tree(
            max_dimension=1 if method == "collapse" else max_dim + 1)
        if method == "collapse":
            st.collapse_edges(nb_iterations=COLLAPSE_ITERATIONS)
            st.expansion(max_dim + 1)
    pairs = _intervals(st, max_dim)
    if method == "alpha":
        pairs = {d: 2.0 * np.sqrt(p) for d, p in pairs.items()}  # squared radius -> diameter
        missing = n - st.num_vertices()  # CGAL merges duplicate points: add their 0-length bars
        if missing > 0:
            pairs[0] = np.concatenate([np.zeros((missing, 2)), pairs[0]])
    return Diagram(pairs, max_dim=max_dim, method=method, n_points=n, notes=tuple(notes))


def _ripser_intervals(x: np.ndarray, max_dim: int,
                      max_edge_length: float) -> dict[int, np.ndarray]:
    """Rips intervals from giotto-ph, values mapped back to float64 edge lengths (see module doc)."""
    n = len(x)
    dist = pdist(x)  # float64; giotto-ph keeps the entries <= thresh of this matrix (float64)
    res = ripser_parallel(squareform(dist), maxdim=max_dim, thresh=max_edge_length,
                          coeff=COEFF_FIELD, metric="precomputed",
                          n_threads=max(1, torch.get_num_threads()))
    exact = np.sort(dist)
    as32 = exact.astype(np.float32)  # monotone, so still sorted
    out = {}
    for d in range(max_dim + 1):
        p = np.asarray(res["dgms"][d], dtype=np.float64).reshape(-1, 2)
        fin = np.isfinite(p) & (p > 0)  # 0 (H0 births) is exact already
        idx = np.searchsorted(as32, p[fin].astype(np.float32))
        p[fin] = exact[np.minimum(idx, len(exact) - 1)]
        # H0: ripser drops zero-length bars (duplicate points), put them back; above: drop
        p = np.concatenate([np.zeros((n - len(p), 2)), p]) if d == 0 else p[p[:, 1] > p[:, 0]]
        out[d] = p[np.lexsort((p[:, 1], p[:, 0]))]
    return out


def _alpha_simplex_tree(x: np.ndarray, max_dim: int, max_edge_length: float):
    alpha = gudhi.AlphaComplex(points=x)
    max_sq = (max_edge_length / 2.0) ** 2 if math.isfinite(max_edge_length) else math.inf
    st = alpha.create_simplex_tree(max_alpha_square=max_sq)
    if st.dimension() > max_dim + 1:
        st.prune_above_dimension(max_dim + 1)
    return st


def _intervals(st: gudhi.SimplexTree, max_dim: int) -> dict[int, np.ndarray]:
    """Intervals of dimensions 0..max_dim, H0 with zero-length bars, higher ones without."""
    # GUDHI skips the top dimension of the complex unless asked: ask when it is <= max_dim
    st.compute_persistence(homology_coeff_field=COEFF_FIELD, min_persistence=-1,
                           persistence_dim_max=st.dimension() <= max_dim)
    out = {}
    for d in range(max_dim + 1):
        p = np.asarray(st.persistence_intervals_in_dimension(d), dtype=np.float64).reshape(-1, 2)
        out[d] = p if d == 0 else p[p[:, 1] > p[:, 0]]
        out[d] = out[d][np.lexsort((out[d][:, 1], out[d][:, 0]))]
    return out
