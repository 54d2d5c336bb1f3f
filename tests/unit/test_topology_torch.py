"""Differentiable persistence: values match GUDHI, gradients match finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from lit_models.topology import (
    Diagram,
    betti_target_loss,
    compute_persistence,
    diagram_torch,
    total_persistence,
    total_persistence_loss,
    wasserstein,
    wasserstein_loss,
)


def cloud(n: int = 8, dim: int = 2, seed: int = 0) -> torch.Tensor:
    """Generic random points (no ties between edge lengths), float64, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64).requires_grad_(True)


def sort_pairs(p: np.ndarray) -> np.ndarray:
    return p[np.lexsort((p[:, 1], p[:, 0]))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagram_torch_matches_gudhi(seed):
    pts = cloud(10, 3, seed)
    ours = diagram_torch(pts, max_dim=1)
    ref = compute_persistence(pts, max_dim=1, method="rips")
    assert_allclose(sort_pairs(ours[0].detach().numpy()), sort_pairs(ref.finite(0)), atol=1e-12)
    assert_allclose(sort_pairs(ours[1].detach().numpy()), sort_pairs(ref.finite(1)), atol=1e-12)
    with_inf = diagram_torch(pts, max_dim=1, include_essential=True)
    assert torch.isinf(with_inf[0][:, 1]).sum() == 1


def test_losses_values():
    pts = cloud(9, 2, 3)
    ref = compute_persistence(pts, max_dim=1, method="rips")
    assert total_persistence_loss(pts, 0).item() == pytest.approx(total_persistence(ref, 0))
    assert total_persistence_loss(pts, 1, p=2).item() == pytest.approx(
        total_persistence(ref, 1, p=2))
    target = Diagram({1: [[0.3, 0.9], [0.2, 0.4], [1.0, math.inf]]}, max_dim=1)
    finite_target = Diagram({1: target.finite(1)}, max_dim=1)
    for order in (1.0, 2.0):
        got = wasserstein_loss(pts, target, 1, order=order).item()
        assert got == pytest.approx(wasserstein(ref, finite_target, 1, order=order))


@pytest.mark.parametrize("seed", [0, 4])
def test_gradcheck_losses(seed):
    pts = cloud(8, 2, seed)
    target = torch.tensor([[0.2, 0.9], [0.1, 0.35]], dtype=torch.float64)
    target_h0 = np.array([[0.0, 0.7], [0.0, 1.3]])
    losses = [
        lambda p: total_persistence_loss(p, 0),
        lambda p: total_persistence_loss(p, 1, p=2),
        lambda p: wasserstein_loss(p, target, 1, order=1),
        lambda p: wasserstein_loss(p, target, 1, order=2, internal_p=2.0),
        lambda p: wasserstein_loss(p, target_h0, 0, order=2),
        lambda p: betti_target_loss(p, 0, target_betti=2, scale=3.0),
        lambda p: betti_target_loss(p, 1, target_betti=1, scale=2.0, p=2),
    ]
    for fn in losses:
        assert torch.autograd.gradcheck(fn, (pts,), eps=1e-6, atol=1e-6)


def test_betti_target_loss_terms():
    pts = cloud(10, 2, 5)
    life = np.sort(np.diff(compute_persistence(pts, max_dim=0, method="rips").finite(0),
                           axis=1)[:, 0])[::-1]
    # H0, 3 components: keep the 2 longest finite bars, shrink the rest
    assert betti_target_loss(pts, 0, 3, scale=None).item() == pytest.approx(life[2:].sum())
    hinge = np.maximum(10.0 - life[:2], 0).sum()
    assert betti_target_loss(pts, 0, 3, scale=10.0).item() == pytest.approx(
        life[2:].sum() + hinge)
    auto = np.maximum(2 * life[2] - life[:2], 0).sum()
    assert betti_target_loss(pts, 0, 3).item() == pytest.approx(life[2:].sum() + auto)
    with pytest.raises(ValueError, match="target_betti"):
        betti_target_loss(pts, 0, 0)


def test_descent_moves_towards_target():
    pts = cloud(10, 2, 6).detach().requires_grad_(True)
    target = torch.tensor([[0.0, 0.5]] * 9, dtype=torch.float64)  # evenly spaced components
    opt = torch.optim.SGD([pts], lr=0.05)
    first = wasserstein_loss(pts, target, 0).item()
    for _ in range(30):
        opt.zero_grad()
        wasserstein_loss(pts, target, 0).backward()
        opt.step()
    assert wasserstein_loss(pts, target, 0).item() < 0.5 * first


def test_degenerate_inputs():
    one = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert all(len(v) == 0 for v in diagram_torch(one).values())
    loss = total_persistence_loss(one, 0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(one.grad, torch.zeros_like(one))
    assert wasserstein_loss(one, np.zeros((0, 2)), 1).item() == 0.0
    dup = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    total_persistence_loss(dup, 0).backward()
    assert torch.isfinite(dup.grad).all()
    with pytest.raises(TypeError, match="torch.Tensor"):
        diagram_torch(np.zeros((3, 2)))
