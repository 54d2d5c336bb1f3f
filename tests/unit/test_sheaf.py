"""Sheaf diffusion: the sheaf Laplacian is symmetric PSD (pruned too), both backends compute it,
identity maps give the graph Laplacian, gradients flow through the sparse ops, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import laplacian

from lhp.errors import UserError
from lit_models.topology.sheaf import (
    SheafDiffusion,
    knn_graph,
    normalized_diffusion,
    prune_maps,
    sheaf_coboundary,
    sheaf_laplacian,
    sheaf_laplacian_apply,
)

N, D, F = 12, 2, 3


@pytest.fixture(scope="module")
def graph() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3-NN graph of 12 points and random float64 send / receive maps."""
    edges = knn_graph(np.random.default_rng(0).normal(size=(N, 2)), 3)
    g = torch.Generator().manual_seed(0)
    e = edges.shape[1]
    return (edges, torch.randn(e, D, D, generator=g, dtype=torch.float64),
            torch.randn(e, D, D, generator=g, dtype=torch.float64))


def dense_laplacian(edges: torch.Tensor, send: torch.Tensor, recv: torch.Tensor,
                    prune: float = 0.0) -> np.ndarray:
    return sheaf_laplacian(edges, send, recv, N, prune).to_dense().numpy()


@pytest.mark.parametrize("prune", [0.0, 0.5, 1.0])
def test_sheaf_laplacian_is_symmetric_psd(graph, prune: float) -> None:
    edges, send, recv = graph
    lap = dense_laplacian(edges, send, recv, prune)
    np.testing.assert_allclose(lap, lap.T, atol=1e-12)
    assert np.linalg.eigvalsh(lap).min() >= -1e-8
    assert np.abs(lap).sum() > 0


def test_pruning_drops_small_entries(graph) -> None:
    edges, send, recv = graph
    full = sheaf_coboundary(edges, send, recv, N)._nnz()
    pruned = sheaf_coboundary(edges, send, recv, N, prune=0.5)
    assert 0 < pruned._nnz() < full
    assert pruned.coalesce().values().abs().min() >= 0.5
    np.testing.assert_allclose(  # pruning = zeroing the small map entries
        dense_laplacian(edges, send, recv, 0.5),
        dense_laplacian(edges, prune_maps(send, 0.5), prune_maps(recv, 0.5)), atol=1e-12)


@pytest.mark.parametrize("prune", [0.0, 0.5])
def test_backends_agree_with_the_dense_laplacian(graph, prune: float) -> None:
    edges, send, recv = graph
    y = torch.randn(N, D, F, dtype=torch.float64)
    expected = dense_laplacian(edges, send, recv, prune) @ y.reshape(N * D, F).numpy()
    for backend in ("block", "sparse"):
        out = sheaf_laplacian_apply(edges, send, recv, y, backend, prune)
        np.testing.assert_allclose(out.reshape(N * D, F).numpy(), expected, atol=1e-10)


def test_identity_maps_give_the_graph_laplacian(graph) -> None:
    edges = graph[0]
    eye = torch.eye(D, dtype=torch.float64).expand(edges.shape[1], D, D)
    adj = np.zeros((N, N))
    adj[edges[0], edges[1]] = adj[edges[1], edges[0]] = 1
    np.testing.assert_allclose(dense_laplacian(edges, eye, eye),
                               np.kron(laplacian(adj), np.eye(D)), atol=1e-12)


@pytest.mark.parametrize("backend", ["block", "sparse"])
def test_gradcheck_through_the_sparse_laplacian(backend: str) -> None:
    edges = knn_graph(np.random.default_rng(1).normal(size=(5, 2)), 2)
    g = torch.Generator().manual_seed(1)
    e = edges.shape[1]
    send, recv = (torch.randn(e, D, D, generator=g, dtype=torch.float64, requires_grad=True)
                  for _ in range(2))
    y = torch.randn(5, D, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, r, z: normalized_diffusion(edges, s, r, z, backend), (send, recv, y))


@pytest.mark.parametrize("backend", ["block", "sparse"])
def test_module_learns_restriction_maps(backend: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    edges = knn_graph(x.numpy(), 4)
    model = SheafDiffusion(5, 3, stalk_dim=2, channels=4, layers=2, backend=backend, prune=1e-4)
    torch.nn.functional.cross_entropy(model(x, edges), torch.randint(3, (40,))).backward()
    for maps in (model.send, model.recv):
        assert all(layer.weight.grad.abs().sum() > 0 for layer in maps)
    assert 0.9 < model.last_kept <= 1.0


def test_knn_graph() -> None:
    x = np.random.default_rng(2).normal(size=(30, 3))
    x[5] = x[4]  # a duplicate point
    edges = knn_graph(x, 3)
    assert (edges[0] < edges[1]).all()
    assert len({tuple(e) for e in edges.T.tolist()}) == edges.shape[1]
    assert [4, 5] in edges.T.tolist()
    assert knn_graph(np.zeros((1, 2)), 3).shape == (2, 0)
    assert knn_graph(np.zeros((0, 2)), 3).shape == (2, 0)


def test_bad_input(graph) -> None:
    edges, send, recv = graph
    with pytest.raises(UserError, match="NaN"):
        knn_graph(np.array([[0.0, np.nan], [1.0, 1.0]]), 1)
    with pytest.raises(UserError, match="k must be"):
        knn_graph(np.zeros((3, 2)), 0)
    with pytest.raises(UserError, match="shape"):
        sheaf_coboundary(edges, send[:-1], recv, N)
    with pytest.raises(UserError, match="backend"):
        sheaf_laplacian_apply(edges, send, recv, torch.zeros(N, D, F, dtype=torch.float64), "cuda")
    with pytest.raises(UserError, match="maps"):
        SheafDiffusion(4, 2, maps="random")
