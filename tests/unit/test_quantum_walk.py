"""Quantum walks: Chebyshev vs eigendecomposition (and scipy's expm_multiply) within tolerance,
unitarity, spectral gap and mixing time on graphs with a known spectrum, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply

from lhp.errors import UserError
from lit_models.topology.hodge import complex_from_simplices, hodge_laplacian, rips_complex
from lit_models.topology.quantum_walk import (
    chebyshev_terms,
    chebyshev_walk,
    eig_walk,
    gershgorin_bound,
    mixing_time,
    spectral_gap,
)


@pytest.fixture(scope="module")
def lap1() -> sp.csr_matrix:
    """L_1 of a Rips complex of 120 random points in the unit cube (a few hundred edges)."""
    x = np.random.default_rng(0).uniform(size=(120, 3))
    return hodge_laplacian(rips_complex(x, 0.25, max_dim=2), 1)


@pytest.mark.parametrize("t", [0.3, 2.0, 25.0])
def test_chebyshev_matches_eigendecomposition(lap1: sp.csr_matrix, t: float) -> None:
    psi0 = np.random.default_rng(1).normal(size=lap1.shape[0]) + 0j
    psi0 /= np.linalg.norm(psi0)
    exact = eig_walk(lap1, psi0, t)
    cheb = chebyshev_walk(lap1, psi0, t)
    assert np.linalg.norm(cheb - exact) < 1e-9
    assert np.linalg.norm(expm_multiply(-1j * t * lap1, psi0) - exact) < 1e-9
    assert abs(np.linalg.norm(cheb) - 1) < 1e-9  # unitary
    assert np.linalg.norm(cheb - psi0) > 1e-3  # the walk moved


def test_chebyshev_needs_about_z_terms() -> None:
    for z in (0.5, 10.0, 200.0):
        coef = chebyshev_terms(z)
        assert z <= len(coef) < z + 40 + 10 * z ** (1 / 3)
        assert abs(coef[-1]) >= 1e-12 or len(coef) - 1 <= z


def test_trivial_walks_are_the_identity(lap1: sp.csr_matrix) -> None:
    psi0 = np.ones(lap1.shape[0])
    np.testing.assert_allclose(chebyshev_walk(lap1, psi0, 0.0), psi0)
    no_edges = hodge_laplacian(rips_complex(np.eye(3), 0.1, max_dim=1), 0)  # L_0 = 0
    np.testing.assert_allclose(chebyshev_walk(no_edges, np.arange(3.0), 5.0), np.arange(3.0))


def test_gershgorin_bounds_the_spectrum(lap1: sp.csr_matrix) -> None:
    assert np.linalg.eigvalsh(lap1.toarray()).max() <= gershgorin_bound(lap1) + 1e-12


def test_spectral_gap_and_mixing_time_of_a_cycle() -> None:
    """The n-cycle's graph Laplacian has eigenvalues 2 - 2 cos(2 pi j / n)."""
    n = 12
    cycle = complex_from_simplices([[i, (i + 1) % n] for i in range(n)])
    lap0 = hodge_laplacian(cycle, 0)
    gap = spectral_gap(lap0)
    assert gap == pytest.approx(2 - 2 * math.cos(2 * math.pi / n))
    assert mixing_time(lap0, eps=0.01) == pytest.approx(math.log(100) / gap)
    assert spectral_gap(hodge_laplacian(cycle, 1)) == pytest.approx(gap)  # Hodge: same non-zero spectrum
    assert spectral_gap(sp.csr_matrix((3, 3))) == math.inf
    assert spectral_gap(sp.csr_matrix((0, 0))) == math.inf


def test_bad_input(lap1: sp.csr_matrix) -> None:
    with pytest.raises(UserError, match="entries"):
        chebyshev_walk(lap1, np.ones(3), 1.0)
    with pytest.raises(UserError, match="finite"):
        chebyshev_walk(lap1, np.full(lap1.shape[0], np.nan), 1.0)
    with pytest.raises(UserError, match="square"):
        eig_walk(sp.csr_matrix((2, 3)), np.ones(2), 1.0)
    with pytest.raises(UserError, match="eps"):
        mixing_time(lap1, eps=2.0)
