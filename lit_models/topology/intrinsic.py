"""Intrinsic dimension of a point cloud (hidden states): TwoNN and the Levina-Bickel MLE.

Both read only nearest-neighbour distances, so they see the dimension of the manifold the points
lie on, not the width of the space (a 2-D sheet in R^320 gives ~2):

* ``twonn_dimension`` (Facco, d'Errico, Rodriguez & Laio 2017, Sci. Rep. 7:12140): for each
  point the ratio ``mu = r2 / r1`` of its second to first neighbour distance is Pareto
  distributed, ``F(mu) = 1 - mu^-d``, whatever the density, if the density is about constant
  over the scale of the second neighbour. ``d`` is the slope of ``-log(1 - F_emp(mu))`` against
  ``log(mu)`` fitted through the origin, after discarding the largest ``discard_fraction`` of
  the ratios (the paper's 10 %: the tail is the most sensitive to noise and curvature). This is
  the estimator of Ansuini et al. (2019) and Valeriani et al. (2023), the anchor of the docs.
* ``mle_dimension`` (Levina & Bickel 2004, NIPS 17): with ``T_j(x)`` the distance to the j-th
  neighbour, ``1 / m_k = mean_x [ 1/(k-1) sum_{j<k} log(T_k(x) / T_j(x)) ]`` (the per-point
  inverses are averaged, as MacKay & Ghahramani noted the pooled likelihood asks), and the
  estimate is the mean of ``m_k`` over ``k1 <= k <= k2`` (the paper's 10..20).

Duplicate points (zero distances: identical hidden states) are removed first; the number
removed is returned. Too few distinct points for an estimator, NaN/inf or a wrong shape raise a
``UserError`` naming the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from lhp.errors import UserError
from lit_models.topology.persistence import as_numpy_points

TWONN_MIN_POINTS = 3  # a point and its two neighbours
TWONN_DISCARD_FRACTION = 0.1  # Facco et al.: drop the largest 10 % of the ratios
MLE_K = (10, 20)  # Levina & Bickel: average over k = 10..20


@dataclass(frozen=True)
class IDEstimate:
    """An intrinsic-dimension estimate: ``dimension``, the points used (distinct) and the
    duplicates dropped before estimating."""

    dimension: float
    n_points: int
    n_duplicates: int


def clean_points(points: torch.Tensor | np.ndarray, what: str = "states") -> np.ndarray:
    """(N, D) float64 numpy copy; UserError (one line, naming ``what``) on NaN, inf or a bad shape."""
    try:
        return as_numpy_points(points)
    except ValueError as err:
        raise UserError(f"{what}: {err}") from None


def _distinct(points: torch.Tensor | np.ndarray, minimum: int, estimator: str
              ) -> tuple[np.ndarray, int]:
    x = clean_points(points, f"{estimator} points")
    distinct = np.unique(x, axis=0) if len(x) else x
    if len(distinct) < minimum:
        raise UserError(f"{estimator} needs at least {minimum} distinct points, got "
                        f"{len(distinct)} (of {len(x)}): pass more hidden states")
    return distinct, len(x) - len(distinct)


def _neighbour_distances(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) distances to the 1st..k-th neighbour of each point (itself excluded)."""
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, _ = nn.kneighbors(x)
    return dist[:, 1:]  # column 0 is the point itself (distinct points: distance 0 only there)


def twonn_dimension(points: torch.Tensor | np.ndarray,
                    discard_fraction: float = TWONN_DISCARD_FRACTION) -> IDEstimate:
    """TwoNN intrinsic dimension (Facco et al. 2017) of the cloud ``points`` (N, D)."""
    if not 0 <= discard_fraction < 1:
        raise UserError(f"twonn discard_fraction must be in [0, 1), got {discard_fraction!r}")
    x, dup = _distinct(points, TWONN_MIN_POINTS, "TwoNN")
    r = _neighbour_distances(x, 2)
    mu = np.sort(r[:, 1] / r[:, 0])
    n = len(mu)
    keep = max(int(np.floor(n * (1 - discard_fraction))), 1)
    f_emp = np.arange(1, n + 1) / n  # empirical CDF at the sorted ratios
    lx, ly = np.log(mu[:keep]), -np.log1p(-f_emp[:keep])
    if not np.any(lx > 0):  # every kept ratio is 1: equidistant neighbours (a lattice)
        raise UserError(f"TwoNN: the first and second neighbour distances are equal for all "
                        f"{keep} kept points (a regular grid?); the estimator is undefined here")
    return IDEstimate(float(np.dot(lx, ly) / np.dot(lx, lx)), n, dup)


def mle_dimension(points: torch.Tensor | np.ndarray, k1: int = MLE_K[0], k2: int = MLE_K[1]
                  ) -> IDEstimate:
    """Levina-Bickel MLE of the intrinsic dimension, averaged over ``k1 <= k <= k2``."""
    if isinstance(k1, bool) or isinstance(k2, bool) or not 2 <= k1 <= k2:
        raise UserError(f"mle_dimension needs 2 <= k1 <= k2, got k1={k1!r}, k2={k2!r}")
    x, dup = _distinct(points, k2 + 1, f"Levina-Bickel MLE (k2={k2})")
    logt = np.log(_neighbour_distances(x, k2))
    estimates = []
    for k in range(k1, k2 + 1):
        inverse = (logt[:, k - 1:k] - logt[:, : k - 1]).sum(axis=1) / (k - 1)
        estimates.append(1.0 / inverse.mean())
    return IDEstimate(float(np.mean(estimates)), len(x), dup)
