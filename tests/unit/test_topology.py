"""Topology engine: diagrams, persistence methods against known answers, MST, Betti events."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from lit_models.topology import (
    BettiEvent,
    Diagram,
    betti_curve,
    betti_events,
    betti_numbers,
    bottleneck,
    choose_method,
    compute_persistence,
    empty_diagram,
    euclidean_mst,
    persistence_entropy,
    total_persistence,
    wasserstein,
)
from lit_models.topology import mst as mst_module
from lit_models.topology import persistence as persistence_module


def circle(n: int, radius: float = 1.0, noise: float = 0.0, dim: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.zeros((n, dim))
    pts[:, 0], pts[:, 1] = radius * np.cos(t), radius * np.sin(t)
    return pts + noise * rng.normal(size=pts.shape)


def blobs(centers, n_each: int, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, dtype=np.float64)
    return np.concatenate([c + sigma * rng.normal(size=(n_each, len(c))) for c in centers])


def h0_deaths(diagram: Diagram) -> np.ndarray:
    return np.sort(diagram.finite(0)[:, 1])


# ---- diagrams -------------------------------------------------------------------------------

DIAG = Diagram({0: [[0, 1], [0, 2], [0, math.inf]], 1: [[0.5, 1.5], [1.0, 3.0]]}, max_dim=1)


def test_betti_numbers_half_open_intervals():
    assert betti_numbers(DIAG, 0.0) == {0: 3, 1: 0}
    assert betti_numbers(DIAG, 1.0) == {0: 2, 1: 2}  # birth <= s: (1,3) alive; s < death: (0,1) not
    assert betti_numbers(DIAG, 1.5) == {0: 2, 1: 1}
    assert betti_numbers(DIAG, 100.0) == {0: 1, 1: 0}
    assert betti_numbers(empty_diagram(1), 1.0) == {0: 0, 1: 0}


def test_betti_curve():
    assert betti_curve(DIAG, 0, [0.0, 1.0, 2.0, 5.0]).tolist() == [3, 2, 1, 1]
    assert betti_curve(DIAG, 1, [0.0, 0.5, 1.2, 2.9, 3.0]).tolist() == [0, 1, 2, 1, 0]
    assert betti_curve(DIAG, 1, []).shape == (0,)
    assert betti_curve(empty_diagram(1), 1, [0.0, 1.0]).tolist() == [0, 0]
    assert betti_curve(DIAG, 5, [1.0]).tolist() == [0]  # dimension never computed: no bars


def test_entropy_and_total_persistence():
    d = Diagram({1: [[0, 1], [1, 2], [2, 3], [0, math.inf]]}, max_dim=1)
    assert persistence_entropy(d, 1) == pytest.approx(math.log(3))  # inf bar left out
    assert persistence_entropy(Diagram({1: [[0, 1]]}, max_dim=1), 1) == 0.0
    assert persistence_entropy(empty_diagram(1), 1) == 0.0
    assert persistence_entropy(Diagram({1: [[1, 1]]}, max_dim=1), 1) == 0.0  # zero-length only
    assert total_persistence(d, 1) == pytest.approx(3.0)
    assert total_persistence(DIAG, 1, p=2) == pytest.approx(1.0 + 4.0)
    assert total_persistence(empty_diagram(1), 0) == 0.0


def test_distances_known_values_and_empty():
    a = Diagram({1: [[0.0, 1.0]]}, max_dim=1)
    b = Diagram({1: [[0.0, 1.5]]}, max_dim=1)
    e = empty_diagram(1)
    assert bottleneck(e, e, 1) == 0.0 and wasserstein(e, e, 1) == 0.0
    assert bottleneck(a, e, 1) == pytest.approx(0.5)  # L-inf distance of (0,1) to the diagonal
    assert wasserstein(a, e, 1) == pytest.approx(0.5)
    assert bottleneck(a, b, 1) == pytest.approx(0.5)
    assert wasserstein(a, b, 1) == pytest.approx(0.5)
    assert wasserstein(a, b, 1, order=2) == pytest.approx(0.5)
    assert bottleneck(a, b, 1) == bottleneck(b, a, 1)
    one_inf = Diagram({0: [[0, math.inf]]})
    two_inf = Diagram({0: [[0, math.inf], [0, math.inf]]})
    assert math.isinf(bottleneck(one_inf, two_inf, 0))
    assert math.isinf(wasserstein(one_inf, two_inf, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wasserstein(one_inf, one_inf, 0) == 0.0
        assert wasserstein(one_inf, Diagram({0: [[1.0, math.inf]]}), 0) == pytest.approx(1.0)


def test_diagram_validation():
    with pytest.raises(ValueError, match="birth <= death"):
        Diagram({0: [[1.0, 0.5]]})
    with pytest.raises(ValueError, match="above max_dim"):
        Diagram({2: [[0, 1]]}, max_dim=1)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        Diagram({0: [[0, 1, 2]]})
    d = Diagram({}, max_dim=2)
    assert [d[k].shape for k in range(4)] == [(0, 2)] * 4


# ---- persistence ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ripser", "rips", "collapse", "alpha"])
def test_circle_has_one_prominent_loop(method):
    pts = circle(40, noise=0.02, dim=3)
    d = compute_persistence(pts, max_dim=1, method=method)
    life = np.sort(d.finite(1)[:, 1] - d.finite(1)[:, 0])[::-1]
    assert life[0] > 1.0 and (len(life) == 1 or life[0] > 5 * life[1])
    h0 = d[0]
    assert len(h0) == 40 and np.isinf(h0[:, 1]).sum() == 1


def test_alpha_scale_is_diameter_not_rips():
    pts = circle(60, dim=3)
    rips = compute_persistence(pts, method="rips")
    alpha = compute_persistence(pts, method="alpha")
    assert_allclose(h0_deaths(alpha), h0_deaths(rips), atol=1e-12)  # H0 identical
    r_loop = rips.finite(1)[np.argmax(np.diff(rips.finite(1), axis=1))]
    a_loop = alpha.finite(1)[np.argmax(np.diff(alpha.finite(1), axis=1))]
    assert r_loop[1] == pytest.approx(math.sqrt(3), abs=0.02)  # equilateral triangle side
    assert a_loop[1] == pytest.approx(2.0, abs=1e-6)  # circumscribed diameter
    assert a_loop[0] == pytest.approx(r_loop[0])  # births: an edge enters at its length


@pytest.mark.parametrize("method", ["ripser", "rips", "mst", "alpha"])
def test_k_clusters_have_k_minus_1_long_h0_bars(method):
    centers = [[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 5]]
    pts = blobs(centers, 25, 0.1, seed=1)
    d = compute_persistence(pts, max_dim=0, method=method)
    deaths = d[0][:, 1]
    assert np.isinf(deaths).sum() == 1 and len(deaths) == len(pts)
    assert (deaths[np.isfinite(deaths)] > 5).sum() == len(centers) - 1


@pytest.mark.parametrize("seed,n,dim", [(0, 40, 2), (1, 60, 3), (2, 50, 5), (3, 40, 12)])
def test_mst_h0_equals_rips_h0(seed, n, dim):
    pts = np.random.default_rng(seed).normal(size=(n, dim))
    rips = compute_persistence(pts, max_dim=0, method="rips")
    mst = compute_persistence(pts, max_dim=0, method="mst")
    assert not mst.approximate
    assert_allclose(h0_deaths(mst), h0_deaths(rips), rtol=1e-12, atol=1e-12)


def test_euclidean_mst_exact_on_hard_cases_and_approximate_bound():
    rng = np.random.default_rng(5)
    cases = [
        blobs(rng.uniform(0, 30, size=(6, 3)), 60, 0.05, seed=2),  # isolated clusters: fallback
        rng.uniform(size=(500, 3)),  # components outgrow k: larger-k queries
        np.repeat(rng.uniform(size=(40, 2)), 3, axis=0),  # duplicates: zero-length edges
        blobs(rng.normal(size=(3, 16)) * 5, 40, 0.1, seed=3),  # D > 10: brute-force oracle
    ]
    rng31 = np.random.default_rng(31)  # a mixture whose search needs the bounded fallback
    cases.append(np.concatenate([
        rng31.normal(size=(rng31.integers(5, 300), 2)) * rng31.uniform(0.005, 0.3)
        + rng31.uniform(-2, 2, 2) for _ in range(rng31.integers(2, 6))]))
    for pts in cases:
        ref = h0_deaths(compute_persistence(pts, max_dim=0, method="rips"))
        edges, lengths = euclidean_mst(pts)
        assert edges.shape == (len(pts) - 1, 2)
        assert_allclose(np.linalg.norm(pts[edges[:, 0]] - pts[edges[:, 1]], axis=1), lengths)
        assert_allclose(np.sort(lengths), ref, atol=1e-12)
        _, approx = euclidean_mst(pts, exact=False, k=2)
        assert len(approx) == len(pts) - 1 and (np.sort(approx) >= ref - 1e-12).all()
    d = compute_persistence(cases[0], max_dim=0, method="mst", exact=False)
    assert d.approximate and d.notes


@pytest.mark.parametrize("n,dim,max_dim,seed", [(60, 3, 1, 0), (80, 8, 1, 1), (35, 4, 2, 2)])
def test_ripser_equals_gudhi_rips(n, dim, max_dim, seed):
    """ripser's float32 values mapped back to float64 edge lengths: GUDHI's diagram exactly."""
    pts = np.random.default_rng(seed).normal(size=(n, dim))
    fast = compute_persistence(pts, max_dim=max_dim, method="ripser")
    ref = compute_persistence(pts, max_dim=max_dim, method="rips")
    assert fast.method == "ripser" and not fast.approximate
    for d in range(max_dim + 1):
        assert len(ref[d]) > 0
        assert_allclose(fast[d], ref[d], rtol=1e-12, atol=0)


@pytest.mark.parametrize("max_edge_length", [math.inf, 0.3, 0.5])
def test_ripser_duplicates_and_threshold_match_gudhi(max_edge_length):
    pts = np.repeat(np.random.default_rng(3).uniform(size=(20, 2)), 3, axis=0)
    fast = compute_persistence(pts, method="ripser", max_edge_length=max_edge_length)
    ref = compute_persistence(pts, method="rips", max_edge_length=max_edge_length)
    assert len(fast[0]) == len(pts) and (fast[0][:, 1] == 0).sum() == 40  # duplicates: 0-length
    for d in (0, 1):
        assert_allclose(fast[d], ref[d], rtol=1e-12, atol=0)


def test_collapse_equals_rips():
    pts = np.random.default_rng(7).normal(size=(45, 4))
    rips = compute_persistence(pts, method="rips")
    col = compute_persistence(pts, method="collapse")
    for dim in (0, 1):
        assert bottleneck(rips, col, dim) < 1e-9


def test_edge_cases_and_validation():
    empty = compute_persistence(np.zeros((0, 3)))
    assert empty.max_dim == 1 and all(len(empty[d]) == 0 for d in (0, 1))
    single = compute_persistence(np.ones((1, 4)), max_dim=1)
    assert single[0].tolist() == [[0.0, math.inf]] and len(single[1]) == 0
    dup = compute_persistence(np.zeros((5, 2)), method="rips")
    assert dup[0].tolist() == [[0.0, 0.0]] * 4 + [[0.0, math.inf]]
    dup_alpha = compute_persistence(np.array([[0, 0], [0, 0], [1, 0], [0, 1.0]]), method="alpha")
    assert len(dup_alpha[0]) == 4
    bad = np.zeros((4, 2))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN.*row 2"):
        compute_persistence(bad)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="inf"):
        compute_persistence(bad)
    with pytest.raises(ValueError, match="2-D"):
        compute_persistence(np.zeros(5))
    with pytest.raises(ValueError, match="one D for all rows"):
        compute_persistence([[0.0, 1.0], [2.0, 3.0, 4.0]])  # mismatched dimensions
    with pytest.raises(ValueError, match="D = 0"):
        compute_persistence(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="max_dim"):
        compute_persistence(np.zeros((5, 2)), max_dim=-1)
    with pytest.raises(ValueError, match="max_edge_length"):
        compute_persistence(np.zeros((5, 2)), max_edge_length=0.0)
    assert compute_persistence(np.zeros((0, 2)), max_dim=0, method="mst")[0].shape == (0, 2)
    with pytest.raises(ValueError, match="H0 only"):
        compute_persistence(np.zeros((5, 2)), max_dim=1, method="mst")
    with pytest.raises(ValueError, match="D <= 3"):
        compute_persistence(np.zeros((5, 4)), method="alpha")
    with pytest.raises(ValueError, match="method must be"):
        compute_persistence(np.zeros((5, 2)), method="vietoris")


def test_torch_input_and_max_edge_length():
    pts = blobs([[0, 0], [5, 0]], 10, 0.1)
    a = compute_persistence(torch.tensor(pts, dtype=torch.float32), method="rips")
    b = compute_persistence(pts.astype(np.float32).astype(np.float64), method="rips")
    assert_allclose(a[0], b[0])
    for method in ("ripser", "rips", "mst", "alpha"):
        d = compute_persistence(pts, max_dim=0, method=method, max_edge_length=2.0)
        assert np.isinf(d[0][:, 1]).sum() == 2  # the two blobs never merge below 2.0


def test_auto_thresholds(monkeypatch):
    assert choose_method(100, 8, 1) == "ripser"
    assert choose_method(100, 3, 1) == "ripser"
    assert choose_method(10_000, 3, 1) == "alpha"
    assert choose_method(1000, 8, 1) == "ripser"
    assert choose_method(1000, 8, 2) == "mst"  # H2 by ripser only for small clouds
    assert choose_method(200, 8, 2) == "ripser"
    assert choose_method(10_000, 8, 1) == "mst"
    assert choose_method(100, 8, 0) == "mst"
    monkeypatch.setattr(persistence_module, "AUTO_RIPS_MAX_POINTS", 5)
    monkeypatch.setattr(persistence_module, "AUTO_RIPSER_MAX_POINTS", 10)
    pts = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.warns(RuntimeWarning, match="dropped"):
        d = compute_persistence(pts, max_dim=1)
    assert d.method == "mst" and d.max_dim == 0 and d.notes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_persistence(pts[:5], max_dim=1).method == "ripser"


# ---- events ---------------------------------------------------------------------------------

BLOB = blobs([[0, 0]], 30, 0.05, seed=3)
TWO_BLOBS = blobs([[0, 0], [5, 0]], 15, 0.05, seed=4)
RING = circle(30)


@pytest.mark.parametrize("prev,curr,kind,dim", [
    (BLOB, TWO_BLOBS, "split", 0),
    (TWO_BLOBS, BLOB, "merge", 0),
    (BLOB, RING, "loop_birth", 1),
    (RING, BLOB, "loop_death", 1),
])
def test_betti_events(prev, curr, kind, dim):
    d_prev = compute_persistence(prev, method="rips")
    d_curr = compute_persistence(curr, method="rips")
    events = betti_events(d_prev, d_curr, scale=0.5, position=123)
    assert events == [BettiEvent(kind=kind, position=123, scale=0.5, magnitude=1, dim=dim,
                                 before=events[0].before, after=events[0].after,
                                 complexity=sum(betti_numbers(d_curr, 0.5).values()))]
    assert abs(events[0].after - events[0].before) == 1
    assert betti_events(d_curr, d_curr, scale=0.5, position=0) == []


def test_betti_events_magnitude_and_h0_only():
    one = compute_persistence(BLOB, max_dim=0, method="mst")
    four = compute_persistence(blobs([[0, 0], [9, 0], [0, 9], [9, 9]], 8, 0.05), max_dim=0,
                               method="mst")
    (event,) = betti_events(one, four, scale=1.0, position=7)
    assert (event.kind, event.magnitude, event.dim) == ("split", 3, 0)


# ---- high-dimensional MST: float32 oracle, approximate H0 -----------------------------------

def dense_mst_lengths(pts: np.ndarray) -> np.ndarray:
    """Reference: scipy's MST of the full distance matrix (distinct points: no zero weights)."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import pdist, squareform
    return np.sort(minimum_spanning_tree(squareform(pdist(pts))).data)


def test_brute_oracle_float32_knn_is_exact_and_falls_back(monkeypatch):
    pts = np.random.default_rng(8).normal(size=(400, 24)) + 50.0  # offset: centring matters
    oracle = mst_module._BruteOracle(pts)
    q = np.arange(len(pts))
    ref_d, ref_i = oracle._knn64(q, 6)
    d, i = oracle.knn(q, 6)  # 14 float32 candidates of 399: certification is exercised
    assert_allclose(d, ref_d, rtol=1e-12)
    np.testing.assert_array_equal(i, ref_i)
    calls = []
    monkeypatch.setattr(oracle, "err", 10.0)  # no row can be certified: all redone in float64
    monkeypatch.setattr(oracle, "_knn64", lambda rows, k: calls.append(len(rows)) or
                        mst_module._BruteOracle._knn64(oracle, rows, k))
    d, i = oracle.knn(q, 6)
    assert calls == [len(pts)] and np.array_equal(i, ref_i)


def test_grouped_top_k_equals_top_k(monkeypatch):
    monkeypatch.setattr(mst_module, "SELECT_MIN_GROUPS", 1)
    part = torch.randn(7, 64 * 50, generator=torch.Generator().manual_seed(0))
    vals, cols = mst_module._smallest(part, 9)
    ref = torch.topk(part, 9, dim=1, largest=False)
    assert torch.equal(vals, ref.values) and np.array_equal(cols, ref.indices.numpy())


@pytest.mark.parametrize("case", ["clusters", "isotropic"])
def test_exact_mst_high_dim_matches_dense_reference(case):
    rng = np.random.default_rng(9)
    if case == "clusters":  # far-apart clusters: the pruned closest-pair fallback runs
        pts = blobs(rng.normal(size=(5, 32)) * 20, 120, 0.5, seed=4)
    else:
        pts = rng.normal(size=(600, 40))
    _, lengths = euclidean_mst(pts)
    assert_allclose(np.sort(lengths), dense_mst_lengths(pts), rtol=1e-12)
    d = compute_persistence(pts, max_dim=0, method="mst")  # <= 2000 points: via ripser
    assert_allclose(h0_deaths(d), dense_mst_lengths(pts), rtol=1e-12)
    assert not d.approximate


def test_approximate_high_dim_h0_is_labelled_upper_bound():
    rng = np.random.default_rng(10)
    basis = np.linalg.qr(rng.normal(size=(64, 4)))[0].T
    pts = blobs(rng.normal(size=(4, 4)) * 10, 300, 1.0, seed=5) @ basis
    pts += 0.01 * rng.normal(size=pts.shape)
    d = compute_persistence(pts, max_dim=0, method="mst", exact=False)
    assert d.approximate and any("PCA projection" in note for note in d.notes)
    ref = dense_mst_lengths(pts)
    approx = h0_deaths(d)
    assert len(approx) == len(ref) and (approx >= ref - 1e-12).all()
    assert total_persistence(d, 0) <= 1.05 * ref.sum()  # low intrinsic dimension: close
