"""Continuous-time quantum walks ``ψ(t) = exp(-i L t) ψ0`` on a (Hodge) Laplacian, and the
spectral gap / mixing time of the matching heat flow ``exp(-t L)``.

Two evaluations of the walk:

* ``chebyshev_walk``: the Chebyshev (Jacobi-Anger) expansion
  ``exp(-i z x) = J_0(z) + 2 Σ_{m>=1} (-i)^m J_m(z) T_m(x)`` on ``x = (L - a) / a`` with
  ``a = λ_max / 2`` and ``z = a t``: only sparse mat-vecs (the three-term recurrence
  ``T_{m+1} = 2 x T_m - T_{m-1}``), memory O(nnz), and the series is cut once the Bessel
  coefficients stay below ``tol`` (they fall super-exponentially for ``m > z``, so about
  ``z + O(z^{1/3})`` terms). ``λ_max`` is bounded by Gershgorin (the largest absolute row sum),
  a guaranteed bound that costs one pass over the matrix. Hand-written because scipy has no
  Chebyshev matrix-function routine: ``scipy.sparse.linalg.expm_multiply`` (Al-Mohy & Higham
  Taylor steps) computes the same product and is the library cross-check in the benchmark.
* ``eig_walk``: dense ``eigh`` then ``V exp(-i Λ t) V^T ψ0``: exact to rounding, O(n^3), the
  reference for small matrices.

Mixing: the heat flow ``exp(-t L) ψ0`` converges to the projection of ``ψ0`` on ``ker L`` (the
harmonic part) at the rate of the smallest non-zero eigenvalue ``λ_gap``; the mixing time is
``ln(1 / ε) / λ_gap`` (the time for the non-harmonic part to shrink by ``ε``). A unitary quantum
walk never mixes; its time-averaged distribution is governed by the same spectrum.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.special import jv

from lhp.errors import UserError
from lit_models.topology.hodge import DENSE_KERNEL_MAX

CHEBYSHEV_TOL = 1e-12


def _check(lap: sp.spmatrix | np.ndarray, psi0: np.ndarray, t: float) -> np.ndarray:
    if lap.ndim != 2 or lap.shape[0] != lap.shape[1]:
        raise UserError(f"the Laplacian must be square, got shape {lap.shape}")
    psi = np.asarray(psi0, dtype=np.complex128)
    if psi.shape[0] != lap.shape[0]:
        raise UserError(f"psi0 has {psi.shape[0]} entries, the Laplacian {lap.shape[0]} rows")
    if not np.isfinite(psi).all() or not math.isfinite(t):
        raise UserError("psi0 and t must be finite")
    return psi


def gershgorin_bound(lap: sp.spmatrix | np.ndarray) -> float:
    """An upper bound of the spectral radius: the largest absolute row sum."""
    if lap.shape[0] == 0:
        return 0.0
    return float(np.asarray(abs(lap).sum(axis=1)).max())


def chebyshev_terms(z: float, tol: float = CHEBYSHEV_TOL) -> np.ndarray:
    """Bessel coefficients ``J_m(z)`` for m = 0..M, M the last index with ``|J_m| >= tol``
    beyond ``z`` (all later ones are smaller: J_m decays monotonically once m > |z|)."""
    m = np.arange(int(abs(z) + 20 + 10 * abs(z) ** (1 / 3)) + 1)
    coef = jv(m, z)
    big = np.flatnonzero((np.abs(coef) >= tol) | (m <= abs(z)))
    return coef[: big[-1] + 1] if len(big) else coef[:1]


def chebyshev_walk(lap: sp.spmatrix | np.ndarray, psi0: np.ndarray, t: float,
                   tol: float = CHEBYSHEV_TOL, bound: float | None = None) -> np.ndarray:
    """``exp(-i L t) ψ0`` by a Chebyshev expansion: sparse mat-vecs only (see module doc)."""
    psi = _check(lap, psi0, t)
    a = (gershgorin_bound(lap) if bound is None else bound) / 2
    if a == 0 or t == 0:  # L = 0 (no edges) or t = 0: the identity
        return psi.copy()
    coef = chebyshev_terms(a * t, tol)

    def x_mul(v: np.ndarray) -> np.ndarray:  # x = (L - a I) / a, spectrum in [-1, 1]
        return (lap @ v - a * v) / a

    t_prev, t_cur = psi, x_mul(psi)
    out = coef[0] * t_prev + (2 * (-1j) * coef[1] * t_cur if len(coef) > 1 else 0)
    for m in range(2, len(coef)):
        t_prev, t_cur = t_cur, 2 * x_mul(t_cur) - t_prev
        out = out + 2 * (-1j) ** m * coef[m] * t_cur
    return np.exp(-1j * a * t) * out


def eig_walk(lap: sp.spmatrix | np.ndarray, psi0: np.ndarray, t: float) -> np.ndarray:
    """``exp(-i L t) ψ0`` by dense eigendecomposition (the reference; small matrices)."""
    psi = _check(lap, psi0, t)
    dense = lap.toarray() if sp.issparse(lap) else np.asarray(lap, dtype=np.float64)
    lam, vec = np.linalg.eigh(dense)
    return vec @ (np.exp(-1j * lam * t) * (vec.T @ psi))


def spectral_gap(lap: sp.spmatrix | np.ndarray) -> float:
    """Smallest non-zero eigenvalue of a symmetric PSD ``lap`` (NumPy's rank tolerance decides
    zero), by dense ``eigvalsh``; ``inf`` when every eigenvalue is zero or the matrix is empty."""
    n = lap.shape[0]
    if n > DENSE_KERNEL_MAX:
        raise UserError(f"spectral gap of a {n:,} x {n:,} Laplacian: dense eigvalsh is limited "
                        f"to {DENSE_KERNEL_MAX:,} rows")
    if n == 0:
        return math.inf
    eig = np.linalg.eigvalsh(lap.toarray() if sp.issparse(lap) else np.asarray(lap))
    tol = max(float(eig[-1]), 1.0) * n * np.finfo(np.float64).eps
    nonzero = eig[eig > tol]
    return float(nonzero[0]) if len(nonzero) else math.inf


def mixing_time(lap: sp.spmatrix | np.ndarray, eps: float = 1e-2) -> float:
    """``ln(1/ε) / λ_gap``: time for the heat flow's non-harmonic part to shrink by ``ε``."""
    if not 0 < eps < 1:
        raise UserError(f"eps must be in (0, 1), got {eps}")
    return math.log(1 / eps) / spectral_gap(lap)
