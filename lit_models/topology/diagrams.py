"""Persistence diagrams and the numbers read off them.

A ``Diagram`` holds, per homology dimension, an (n, 2) float64 array of (birth, death) pairs;
death may be ``inf`` (an essential class, e.g. the one component that never merges). Every
function here is total on empty diagrams and returns the mathematically right answer there:
Betti numbers 0, entropy 0, total persistence 0, distance 0 between two empty diagrams.

Scales are those of the filtration that produced the diagram (see ``persistence.py``: edge
length for Rips / MST, ball diameter for alpha), so compare diagrams of the same ``method``.
Distances come from GUDHI (bottleneck) and ``gudhi.wasserstein`` (optimal transport via POT).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import gudhi
import numpy as np
from gudhi.wasserstein import wasserstein_distance

_EMPTY = np.zeros((0, 2), dtype=np.float64)


def _as_pairs(pairs: object) -> np.ndarray:
    arr = np.asarray(pairs, dtype=np.float64)
    if arr.size == 0:
        return _EMPTY.copy()
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"persistence pairs must have shape (n, 2), got {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("persistence pairs contain NaN")
    if (arr[:, 1] < arr[:, 0]).any():
        raise ValueError("persistence pairs must satisfy birth <= death")
    return arr


@dataclass(frozen=True)
class Diagram:
    """Persistence pairs per homology dimension, and how they were computed.

    ``pairs[d]`` is an (n, 2) array of (birth, death); dimensions 0..``max_dim`` always exist
    (possibly empty). ``method`` names the filtration ("rips", "collapse", "alpha", "mst", ...)
    and ``approximate`` is True when the pairs are not the exact diagram of that filtration
    (a k-NN-graph MST, H1 on landmarks). ``n_points`` is the size of the input cloud.
    """

    pairs: Mapping[int, np.ndarray]
    max_dim: int = 0
    method: str = "unknown"
    approximate: bool = False
    n_points: int = 0
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_dim < 0:
            raise ValueError(f"max_dim must be >= 0, got {self.max_dim}")
        clean = {d: _as_pairs(self.pairs.get(d, _EMPTY)) for d in range(self.max_dim + 1)}
        extra = sorted(set(self.pairs) - set(clean))
        if extra:
            raise ValueError(f"pairs given for dimensions {extra} above max_dim={self.max_dim}")
        object.__setattr__(self, "pairs", clean)

    def __getitem__(self, dim: int) -> np.ndarray:
        """Pairs of dimension ``dim`` (an empty (0, 2) array above ``max_dim``)."""
        return self.pairs.get(dim, _EMPTY)

    def finite(self, dim: int) -> np.ndarray:
        """Pairs of dimension ``dim`` with a finite death."""
        p = self[dim]
        return p[np.isfinite(p[:, 1])]

    def essential(self, dim: int) -> np.ndarray:
        """Pairs of dimension ``dim`` that never die (death = inf)."""
        p = self[dim]
        return p[~np.isfinite(p[:, 1])]

    @property
    def dims(self) -> list[int]:
        return list(range(self.max_dim + 1))

    def __repr__(self) -> str:
        counts = ", ".join(f"H{d}:{len(p)}" for d, p in self.pairs.items())
        approx = ", approximate" if self.approximate else ""
        return f"Diagram({counts}, method={self.method!r}{approx}, n_points={self.n_points})"


def empty_diagram(max_dim: int = 0, method: str = "empty") -> Diagram:
    """The diagram of an empty cloud: no pairs in any dimension."""
    return Diagram({}, max_dim=max_dim, method=method, n_points=0)


def betti_numbers(diagram: Diagram, scale: float) -> dict[int, int]:
    """Features alive at ``scale`` per dimension: pairs with birth <= scale < death."""
    return {d: int(np.count_nonzero((p[:, 0] <= scale) & (scale < p[:, 1])))
            for d, p in diagram.pairs.items()}


def betti_curve(diagram: Diagram, dim: int, scales: Sequence[float] | np.ndarray) -> np.ndarray:
    """Betti number of dimension ``dim`` at each of ``scales`` (int64 array, same length)."""
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    p = diagram[dim]
    if s.size == 0 or len(p) == 0:
        return np.zeros(s.size, dtype=np.int64)
    alive = (p[None, :, 0] <= s[:, None]) & (s[:, None] < p[None, :, 1])
    return alive.sum(axis=1).astype(np.int64)


def _lifetimes(diagram: Diagram, dim: int) -> np.ndarray:
    p = diagram.finite(dim)
    return p[:, 1] - p[:, 0]


def persistence_entropy(diagram: Diagram, dim: int) -> float:
    """Shannon entropy (nats) of the normalised finite lifetimes of dimension ``dim``.

    ``p_i = l_i / sum(l)`` over bars with finite death and positive lifetime. Infinite bars are
    left out: their lifetime has no finite value, and truncating them at an arbitrary scale would
    let that choice dominate the number (H0 always has one). Zero-length bars contribute nothing.
    Empty diagram, or all lifetimes zero: 0.0.
    """
    life = _lifetimes(diagram, dim)
    life = life[life > 0]
    if life.size == 0:
        return 0.0
    prob = life / life.sum()
    return float(-(prob * np.log(prob)).sum())


def total_persistence(diagram: Diagram, dim: int, p: float = 1.0) -> float:
    """Sum of ``lifetime ** p`` over finite bars of dimension ``dim`` (0.0 if none)."""
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    return float((_lifetimes(diagram, dim) ** p).sum())


def bottleneck(d1: Diagram, d2: Diagram, dim: int, e: float | None = None) -> float:
    """Bottleneck distance between the ``dim`` parts of two diagrams (GUDHI).

    Infinite bars are matched among themselves; if their counts differ the distance is inf.
    Two empty diagrams are at distance 0. ``e`` > 0 allows GUDHI's faster approximate mode.
    """
    a, b = d1[dim], d2[dim]
    if len(a) == 0 and len(b) == 0:
        return 0.0
    return float(gudhi.bottleneck_distance(a, b, e))


def wasserstein(d1: Diagram, d2: Diagram, dim: int, order: float = 1.0,
                internal_p: float = np.inf) -> float:
    """q-Wasserstein distance (``order`` = q) between the ``dim`` parts (``gudhi.wasserstein``).

    Ground metric: L^``internal_p`` in the (birth, death) plane; unmatched points go to the
    diagonal. Essential (infinite) bars are matched among themselves: different counts give inf.
    Two empty diagrams are at distance 0.
    """
    a, b = d1[dim], d2[dim]
    if len(a) == 0 and len(b) == 0:
        return 0.0
    with warnings.catch_warnings():
        # differing essential counts: the documented inf, not a warning
        warnings.filterwarnings("ignore", message="Cardinality of essential parts differs")
        # no finite points on either side: POT's empty transport problem warns, answer is right
        warnings.filterwarnings("ignore", message="invalid value encountered in divide")
        warnings.filterwarnings("ignore", message="Problem infeasible")
        return float(wasserstein_distance(a, b, order=order, internal_p=internal_p,
                                          keep_essential_parts=True))
