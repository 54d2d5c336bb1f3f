"""Persistence diagrams that carry gradients, and losses built on them.

Rips convention: a simplex enters at its longest edge's Euclidean length, so every finite
birth and death of a Rips diagram *is* the length of one edge. GUDHI computes the pairs on
detached values (``flag_persistence_generators`` names, for each pair, the edge that gave the
birth and the edge that gave the death); the lengths of those edges are then recomputed in
torch from ``points``, so autograd flows through pairwise distances to the points. The pairing
is piecewise constant in the points, so the gradient is exact wherever the pairing does not
change (generic clouds: no ties between edge lengths). Cost is that of a full Rips complex:
keep clouds small (a few hundred points for H1).

Duplicate points give zero-length edges whose gradient is taken as 0 (torch's norm at 0).
"""

from __future__ import annotations

import math

import gudhi
import numpy as np
import torch
from gudhi.wasserstein import wasserstein_distance

from lit_models.topology.diagrams import Diagram
from lit_models.topology.persistence import COEFF_FIELD, as_numpy_points


def _edge_lengths(points: torch.Tensor, u: np.ndarray, v: np.ndarray) -> torch.Tensor:
    u_t = torch.as_tensor(u, dtype=torch.long, device=points.device)
    v_t = torch.as_tensor(v, dtype=torch.long, device=points.device)
    return torch.linalg.vector_norm(points[u_t] - points[v_t], dim=-1)


def diagram_torch(points: torch.Tensor, max_dim: int = 1, max_edge_length: float = math.inf,
                  include_essential: bool = False) -> dict[int, torch.Tensor]:
    """Rips persistence pairs of ``points`` (N, D) as (n, 2) tensors, differentiable.

    Finite pairs only by default; dimension >= 1 pairs of zero length are dropped. With
    ``include_essential`` the infinite bars are appended (death = inf, no gradient through it).
    """
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if max_dim < 0:
        raise ValueError(f"max_dim must be >= 0, got {max_dim}")
    x = as_numpy_points(points)
    empty = points.new_zeros((0, 2))
    out = {d: empty for d in range(max_dim + 1)}
    if len(x) == 0:
        return out
    if len(x) == 1:
        if include_essential:
            out[0] = points.new_tensor([[0.0, math.inf]])
        return out
    st = gudhi.RipsComplex(points=x, max_edge_length=max_edge_length).create_simplex_tree(
        max_dimension=max_dim + 1)
    st.compute_persistence(homology_coeff_field=COEFF_FIELD, min_persistence=-1,
                           persistence_dim_max=st.dimension() <= max_dim)
    fin0, fin_hi, ess0, ess_hi = st.flag_persistence_generators()
    fin0 = np.asarray(fin0).reshape(-1, 3)
    deaths = _edge_lengths(points, fin0[:, 1], fin0[:, 2])
    out[0] = torch.stack([torch.zeros_like(deaths), deaths], dim=1)
    if include_essential and len(ess0):
        inf_bars = points.new_tensor([[0.0, math.inf]]).expand(len(ess0), 2)
        out[0] = torch.cat([out[0], inf_bars])
    for d in range(1, max_dim + 1):
        if d - 1 < len(fin_hi) and len(fin_hi[d - 1]):
            g = np.asarray(fin_hi[d - 1]).reshape(-1, 4)
            pairs = torch.stack([_edge_lengths(points, g[:, 0], g[:, 1]),
                                 _edge_lengths(points, g[:, 2], g[:, 3])], dim=1)
            out[d] = pairs[(pairs[:, 1] > pairs[:, 0]).detach()]
        if include_essential and d - 1 < len(ess_hi) and len(ess_hi[d - 1]):
            g = np.asarray(ess_hi[d - 1]).reshape(-1, 2)
            births = _edge_lengths(points, g[:, 0], g[:, 1])
            ess = torch.stack([births, torch.full_like(births, math.inf)], dim=1)
            out[d] = torch.cat([out[d], ess])
    return out


def _lifetimes(points: torch.Tensor, dim: int) -> torch.Tensor:
    pairs = diagram_torch(points, max_dim=dim)[dim]
    return pairs[:, 1] - pairs[:, 0]


def total_persistence_loss(points: torch.Tensor, dim: int, p: float = 1.0) -> torch.Tensor:
    """Sum of ``lifetime ** p`` over the finite ``dim`` bars (0 for H0 = sum of MST lengths)."""
    return (_lifetimes(points, dim) ** p).sum() + 0.0 * points.sum()


def _target_pairs(target: Diagram | torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    if isinstance(target, Diagram):
        y = target[dim]
    elif isinstance(target, torch.Tensor):
        y = target.detach().to("cpu", torch.float64).numpy()
    else:
        y = np.asarray(target, dtype=np.float64)
    y = y.reshape(-1, 2)
    return y[np.isfinite(y).all(axis=1)]


def _to_diagonal(pairs: torch.Tensor, internal_p: float) -> torch.Tensor:
    """L^internal_p distance of (b, d) to the diagonal, as in ``gudhi.wasserstein``."""
    return (pairs[:, 1] - pairs[:, 0]) * 2.0 ** (1.0 / internal_p - 1.0)


def wasserstein_loss(points: torch.Tensor, target: Diagram | torch.Tensor | np.ndarray,
                     dim: int, order: float = 1.0, internal_p: float = math.inf) -> torch.Tensor:
    """q-Wasserstein distance (q = ``order``) from the ``dim`` diagram of ``points`` to ``target``.

    The optimal matching comes from ``gudhi.wasserstein`` (``matching=True``) on detached values;
    the cost is then rebuilt in torch so it is differentiable in ``points``: matched pairs cost
    their L^``internal_p`` distance, unmatched ones their distance to the diagonal. Finite bars
    only on both sides (infinite target bars are ignored). Equals
    ``diagrams.wasserstein(..., keep_essential_parts=False)`` in value.
    """
    x = diagram_torch(points, max_dim=dim)[dim]
    y_np = _target_pairs(target, dim)
    zero = 0.0 * points.sum()
    if len(x) == 0 and len(y_np) == 0:
        return zero
    _, matching = wasserstein_distance(x.detach().cpu().numpy().astype(np.float64), y_np,
                                       matching=True, order=order, internal_p=internal_p,
                                       keep_essential_parts=False)
    matching = np.asarray(matching, dtype=np.int64).reshape(-1, 2)
    y = torch.as_tensor(y_np, dtype=x.dtype, device=x.device)
    i, j = matching[:, 0], matching[:, 1]
    both = (i >= 0) & (j >= 0)
    matched = torch.linalg.vector_norm(x[i[both]] - y[j[both]], ord=internal_p, dim=-1)
    total = (matched ** order).sum() + zero
    total = total + (_to_diagonal(x[i[(i >= 0) & (j < 0)]], internal_p) ** order).sum()
    total = total + (_to_diagonal(y[j[(j >= 0) & (i < 0)]], internal_p) ** order).sum()
    if order == 1 or total.detach() == 0:
        return total  # avoids the infinite slope of t ** (1/q) at t = 0
    return total ** (1.0 / order)


def betti_target_loss(points: torch.Tensor, dim: int, target_betti: int,
                      scale: float | str | None = "auto", p: float = 1.0) -> torch.Tensor:
    """Push the ``dim`` diagram of ``points`` towards exactly ``target_betti`` prominent bars.

    Lifetimes sorted longest first; the first k are kept, where k = ``target_betti`` in
    dimensions >= 1 and ``target_betti - 1`` in H0 (the infinite bar is the first component).

    loss = sum_{i >= k} l_i ** p              (shrink every extra feature to nothing)
         + sum_{i < k} relu(scale - l_i) ** p  (grow the kept ones to at least ``scale``)

    ``scale``: a number; None (no growth term); "auto" = twice the longest extra lifetime,
    taken without gradient (kept features should stand out by a factor of 2 from the noise).
    If the diagram has fewer than k bars, the missing ones cannot be created by gradients.
    """
    if target_betti < 0 or (dim == 0 and target_betti < 1):
        raise ValueError(f"target_betti must be >= 0 (>= 1 for H0), got {target_betti}")
    life = torch.sort(_lifetimes(points, dim), descending=True).values
    k = target_betti - 1 if dim == 0 else target_betti
    kept, extra = life[:k], life[k:]
    loss = (extra ** p).sum() + 0.0 * points.sum()
    if scale == "auto":
        scale = 2.0 * float(extra[0].detach()) if len(extra) else None
    elif isinstance(scale, str):
        raise ValueError(f"scale must be a number, None or 'auto', got {scale!r}")
    if scale is not None and len(kept):
        loss = loss + (torch.relu(scale - kept) ** p).sum()
    return loss
