"""Hodge Laplacians: Betti numbers from their kernels equal GUDHI's at the same scale; scipy and
torch agree; the smooth Betti estimate is differentiable and works as a loss; bad input."""

from __future__ import annotations

import math

import gudhi
import numpy as np
import pytest
import torch

from lhp.errors import UserError
from lit_models.topology.hodge import (
    boundary_matrix,
    complex_from_simplices,
    distance_weights,
    hodge_betti,
    hodge_laplacian,
    hodge_laplacian_torch,
    rips_complex,
    smooth_betti,
)


def gudhi_betti(x: np.ndarray, scale: float) -> list[int]:
    """b_0..b_2 of GUDHI's own Rips complex at ``scale`` (expanded to tetrahedra)."""
    st = gudhi.RipsComplex(points=x, max_edge_length=scale).create_simplex_tree(max_dimension=3)
    st.compute_persistence(homology_coeff_field=11, persistence_dim_max=True)
    return (list(st.betti_numbers()) + [0, 0, 0])[:3]


def circle(n: int, noise: float, seed: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[np.cos(t), np.sin(t)] + noise * np.random.default_rng(seed).normal(size=(n, 2))


def sphere(n: int) -> np.ndarray:
    """A Fibonacci lattice on the unit sphere (even spacing)."""
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]


def torus_grid(a: int = 20, b: int = 8) -> np.ndarray:
    u, v = (g.ravel() for g in np.meshgrid(np.linspace(0, 2 * np.pi, a, endpoint=False),
                                           np.linspace(0, 2 * np.pi, b, endpoint=False)))
    return np.c_[(2 + np.cos(v)) * np.cos(u), (2 + np.cos(v)) * np.sin(u), np.sin(v)]


CASES = {  # name: (points, scale, known Betti numbers or None for "whatever GUDHI says")
    "circle": (circle(30, 0.02, 0), 0.5, [1, 1, 0]),
    "sphere": (sphere(50), 1.0, [1, 0, 1]),
    "random sphere": (sphere(50) + 0.05 * np.random.default_rng(1).normal(size=(50, 3)), 0.9, None),
    "torus": (torus_grid(), 1.2, [1, 2, 1]),
    "two circles": (np.r_[circle(20, 0.0, 0), circle(20, 0.0, 0) + 3.0], 0.5, [2, 2, 0]),
    **{f"random {s}": (np.random.default_rng(s).uniform(size=(35, 3)), 0.3, None)
       for s in range(3)},
    "random 2-D": (np.random.default_rng(7).uniform(size=(40, 2)), 0.2, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_betti_from_hodge_kernels_equal_gudhi(name: str) -> None:
    x, scale, known = CASES[name]
    cx = rips_complex(x, scale)
    expected = gudhi_betti(x, scale)
    assert hodge_betti(cx) == expected
    assert hodge_betti(cx, weights=distance_weights(cx.diameters, scale, scale / 10)) == expected
    if known is not None:
        assert expected == known


def test_rips_complex_is_gudhis() -> None:
    x, scale, _ = CASES["random 0"]
    cx = rips_complex(x, scale)
    st = gudhi.RipsComplex(points=x, max_edge_length=scale).create_simplex_tree(max_dimension=3)
    for k in range(4):
        ours = {tuple(s) for s in cx.simplices[k]}
        theirs = {tuple(sorted(s)) for s, _ in st.get_skeleton(k) if len(s) == k + 1}
        assert ours == theirs
    edges = cx.simplices[1]
    np.testing.assert_allclose(cx.diameters[1], np.linalg.norm(x[edges[:, 0]] - x[edges[:, 1]], axis=1))


def test_laplacians_are_symmetric_psd_and_boundaries_compose_to_zero() -> None:
    cx = rips_complex(*CASES["sphere"][:2])
    for k in (1, 2):
        assert abs(boundary_matrix(cx, k) @ boundary_matrix(cx, k + 1)).sum() == 0
    w = distance_weights(cx.diameters, 1.0, 0.1)
    for k in range(3):
        for weights in (None, w):
            lap = hodge_laplacian(cx, k, weights).toarray()
            np.testing.assert_allclose(lap, lap.T, atol=1e-12)
            assert np.linalg.eigvalsh(lap).min() >= -1e-9


def test_scipy_and_torch_laplacians_agree() -> None:
    cx = rips_complex(*CASES["random 1"][:2])
    w = distance_weights(cx.diameters, 0.3, 0.03)
    w_t = [torch.tensor(a) for a in w]
    for k in range(3):
        np.testing.assert_allclose(hodge_laplacian_torch(cx, k).to_dense().numpy(),
                                   hodge_laplacian(cx, k).toarray(), atol=1e-12)
        np.testing.assert_allclose(hodge_laplacian_torch(cx, k, w_t).to_dense().numpy(),
                                   hodge_laplacian(cx, k, w).toarray(), atol=1e-12)
    up = hodge_laplacian(cx, 1, part="up") + hodge_laplacian(cx, 1, part="down")
    np.testing.assert_allclose(up.toarray(), hodge_laplacian(cx, 1).toarray())


def test_given_complexes() -> None:
    hollow_triangle = complex_from_simplices([[0, 1], [1, 2], [0, 2]])
    assert hodge_betti(hollow_triangle) == [1, 1, 0]
    hollow_tetra = complex_from_simplices([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    assert hodge_betti(hollow_tetra) == [1, 0, 1]
    assert hodge_betti(complex_from_simplices([[0, 1, 2, 3]])) == [1, 0, 0]
    with pytest.raises(UserError, match="distinct"):
        complex_from_simplices([[0, 0, 1]])
    with pytest.raises(UserError, match="renumber"):
        complex_from_simplices([[0, 5]])


# ----------------------------------------------------------------------------- smooth Betti


def test_smooth_betti_tracks_betti_on_a_clean_circle() -> None:
    x = torch.tensor(circle(40, 0.0, 0))
    assert smooth_betti(x, 0, 0.5).item() == pytest.approx(1.0, abs=0.1)
    assert 0.5 < smooth_betti(x, 1, 0.5).item() < 1.5
    assert smooth_betti(x, 1, 0.1).item() < 0.01  # no edges yet at 0.1: no loop


def test_smooth_betti_gradcheck() -> None:
    x = torch.tensor(np.random.default_rng(3).uniform(size=(6, 2)), requires_grad=True)
    for k in (0, 1):
        assert torch.autograd.gradcheck(lambda p, k=k: smooth_betti(p, k, 0.6, tau=0.1), (x,))


def test_smooth_betti_as_a_loss_opens_the_loop_of_a_noisy_circle() -> None:
    """At scale 0.5 the noisy circle's loop is filled (GUDHI b_1 = 0, b_0 = 2); minimising
    (sb_0 - 1)^2 + (sb_1 - 1)^2 over the point positions reaches GUDHI (b_0, b_1) = (1, 1)."""
    x0, scale = circle(30, 0.15, 3), 0.5
    assert gudhi_betti(x0, scale)[:2] == [2, 0]
    x = torch.tensor(x0, requires_grad=True)
    first = smooth_betti(x, 1, scale)
    first.backward()
    assert x.grad.abs().sum() > 0
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(40):
        loss = (smooth_betti(x, 1, scale) - 1) ** 2 + (smooth_betti(x, 0, scale) - 1) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(smooth_betti(x, 1, scale).item() - 1) < abs(first.item() - 1)
    assert gudhi_betti(x.detach().numpy(), scale)[:2] == [1, 1]


# ----------------------------------------------------------------------------- bad input


def test_empty_and_one_point_clouds() -> None:
    empty = rips_complex(np.zeros((0, 3)), 1.0)
    assert empty.size == 0 and hodge_betti(empty) == [0, 0, 0]
    assert hodge_laplacian(empty, 1).shape == (0, 0)
    assert hodge_betti(rips_complex(np.zeros((1, 2)), 1.0)) == [1, 0, 0]
    assert smooth_betti(torch.zeros((1, 2)), 1, 1.0).item() == 0.0


def test_duplicate_points_are_joined() -> None:
    x = CASES["circle"][0]
    doubled = np.r_[x, x[:5]]
    cx = rips_complex(doubled, 0.5)
    assert hodge_betti(cx) == gudhi_betti(doubled, 0.5) == [1, 1, 0]
    assert (cx.diameters[1] == 0).sum() == 5


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_coordinates(bad: float) -> None:
    x = np.zeros((4, 2))
    x[2, 1] = bad
    with pytest.raises(UserError, match="row 2"):
        rips_complex(x, 1.0)


@pytest.mark.parametrize("max_dim, budget, match", [
    (1, 100, "edges"), (2, 500, "triangles"), (3, 1000, "tetrahedra")])
def test_complex_over_the_memory_budget(max_dim: int, budget: int, match: str) -> None:
    x, scale, _ = CASES["sphere"]  # 50 + 280 + 512 + 380 simplices
    with pytest.raises(UserError, match="max_simplices") as err:
        rips_complex(x, scale, max_dim=max_dim, max_simplices=budget)
    assert match in str(err.value)
    assert rips_complex(x, scale, max_dim=max_dim, max_simplices=1222).size <= 1222


def test_bad_arguments() -> None:
    x = CASES["circle"][0]
    for scale in (0.0, -1.0, math.inf):
        with pytest.raises(UserError, match="scale"):
            rips_complex(x, scale)
    cx = rips_complex(x, 0.5, max_dim=1)
    with pytest.raises(UserError, match="max_dim >= 2"):
        hodge_laplacian(cx, 1)
    with pytest.raises(UserError, match="k must be"):
        hodge_laplacian(rips_complex(x, 0.5), 3)
