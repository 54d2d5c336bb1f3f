"""Persistence backends: giotto-ph's ripser_parallel gives the diagrams of the previous path
(ripser.py's private extension), and the torch (CUDA) H0 path equals the exact CPU MST."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pyRipser import doRipsFiltrationDM  # the previous Rips path, kept here as the reference
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist

from experiments.bench.persistence import gpu_checks
from lit_models.topology import compute_persistence, euclidean_mst, euclidean_mst_torch, h0_device


def _legacy_ripser(x: np.ndarray, max_dim: int) -> list[np.ndarray]:
    """The engine's Rips values before giotto-ph: float32 bars from pyRipser, mapped back to
    the float64 edge lengths exactly as the engine does, sorted."""
    dist = pdist(x)
    res = doRipsFiltrationDM(dist.astype(np.float32), max_dim, math.inf, 2, False)
    exact = np.sort(dist)
    as32 = exact.astype(np.float32)
    out = []
    for d in range(max_dim + 1):
        p = np.asarray(res["births_and_deaths_by_dim"][d], dtype=np.float64).reshape(-1, 2)
        fin = np.isfinite(p) & (p > 0)
        p[fin] = exact[np.minimum(np.searchsorted(as32, p[fin].astype(np.float32)), len(exact) - 1)]
        p = p[p[:, 1] > p[:, 0]]
        out.append(p[np.lexsort((p[:, 1], p[:, 0]))])
    return out


def _clouds():
    rng = np.random.default_rng(3)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    circle = np.column_stack([np.cos(t), np.sin(t)]) + 0.05 * rng.normal(size=(40, 2))
    dup = rng.normal(size=(30, 4))
    dup[10:15] = dup[0]  # duplicate points: zero-length H0 bars
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2).astype(float)
    return {"circle": circle, "gauss-R8": rng.normal(size=(80, 8)), "duplicates": dup,
            "grid-ties": grid, "two-clusters": np.concatenate([rng.normal(size=(25, 3)),
                                                               rng.normal(size=(25, 3)) + 6])}


@pytest.mark.parametrize("name", list(_clouds()))
@pytest.mark.parametrize("max_dim", [1, 2])
def test_giotto_ph_gives_the_previous_paths_diagrams(name: str, max_dim: int) -> None:
    x = _clouds()[name]
    new = compute_persistence(x, max_dim=max_dim, method="ripser")
    old = _legacy_ripser(x, max_dim)
    for d in range(max_dim + 1):
        got = new[d][new[d][:, 1] > new[d][:, 0]]  # the old path drops zero-length H0 bars
        np.testing.assert_array_equal(got, old[d])
    assert len(new[0]) == len(x)


def _assert_same_mst(x: np.ndarray) -> None:
    edges, lengths = euclidean_mst_torch(torch.from_numpy(x))
    _, ref = euclidean_mst(x)
    edges, lengths = edges.numpy(), lengths.numpy()
    n = len(x)
    assert edges.shape == (n - 1, 2) and lengths.shape == (n - 1,)
    np.testing.assert_allclose(np.sort(lengths), np.sort(ref), rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.linalg.norm(x[edges[:, 0]] - x[edges[:, 1]], axis=1), lengths,
                               rtol=1e-12, atol=0)  # each reported length is its edge's
    graph = coo_matrix((np.ones(n - 1), (edges[:, 0], edges[:, 1])), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == 1  # a spanning tree


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("n", [2, 3, 17, 400])
def test_torch_mst_equals_exact_mst_random(dim: int, n: int) -> None:
    _assert_same_mst(np.random.default_rng(n * 10 + dim).normal(size=(n, dim)))


def test_torch_mst_equals_exact_mst_ties_duplicates_and_clusters() -> None:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(7), np.arange(6), np.arange(3)), -1).reshape(-1, 3)
    grid = grid.astype(np.float64)
    _assert_same_mst(grid)  # every edge length tied
    _assert_same_mst(np.concatenate([grid, grid[:40], grid[:5]]))  # duplicates (length 0)
    _assert_same_mst(np.round(rng.normal(size=(300, 2)) * 2))  # ties and duplicates mixed
    clusters = np.concatenate([rng.normal(size=(120, 3)) * 0.01 + 50.0 * k for k in range(4)])
    _assert_same_mst(clusters)  # far clusters: the brute-force fallback settles the joins
    _assert_same_mst(np.zeros((12, 3)))  # all one point: over the grid budget -> CPU path


def test_torch_mst_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="1 <= D <= 3"):
        euclidean_mst_torch(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="NaN"):
        euclidean_mst_torch(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    edges, lengths = euclidean_mst_torch(torch.zeros(1, 2))
    assert edges.shape == (0, 2) and lengths.shape == (0,)


def test_h0_device_selection() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert h0_device(1_000_000, 3, exact=True) == expected
    assert h0_device(1_000_000, 8, exact=True) == "cpu"  # no grid in high D
    assert h0_device(100, 3, exact=True) == "cpu"  # small: the kd-tree is faster
    assert h0_device(1_000_000, 3, exact=False) == "cpu"


def test_gpu_checks_tiny_on_cpu() -> None:
    figures = list(gpu_checks(torch.device("cpu"), tiny=True))
    names = [f[0] for f in figures]
    assert names[0].startswith("H0 exact MST 10,000 points R^3 on cpu") and figures[0][2] == "s"
    assert figures[0][1] > 0 and figures[1][1] == 9_999
    assert figures[2][1] <= 1e-12  # torch path vs CPU MST
