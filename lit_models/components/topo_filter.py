"""Prefix-causal topological filter of the QTG architecture (and its k-NN mean control).

The graph: every token ``i`` links to its ``k`` nearest *earlier* tokens (Euclidean distance
between unit-normalised embeddings, so ``threshold`` is on the chordal scale [0, 2]). Node ``i``'s
links depend only on tokens <= i, so the graph on any prefix is final once the prefix is read.

The filter at position ``i`` looks at its neighbourhood ``P_i = {i} + kNN(i)`` with the k-NN
graph's edges among those points (the star ``i - kNN(i)`` plus every pair where one is among the
other's k nearest earlier tokens). Its H0 persistence (the Rips filtration of a graph: bars
``[0, w)`` for the edge lengths ``w`` of its minimum spanning tree) says when each neighbour's
component merges with ``i``'s: at the *minimax* (bottleneck) distance from ``i``, the longest edge
on the tree path. Components merging below ``threshold`` are short-lived structure (noise
around ``i``) and are averaged into it; neighbours separated by a long-lived bar are kept apart::

    w_ij = sigmoid((threshold - minimax_ij) / temperature)
    out_i = (x_i + sum_j w_ij x_j) / (1 + sum_j w_ij)

This is persistence simplification at scale ``threshold`` (single-linkage cluster of ``i``),
softened so gradients reach the distances. Everything depends only on tokens <= i, so the
filter is prefix-causal and gives the same output in one pass or token by token (cached).

Why not the topology engine (``lit_models.topology.euclidean_mst``): it computes one exact EMST
of one large cloud in numpy/scipy, detached, on the CPU. Here there are B*T tiny graphs of
k + 1 nodes per forward pass, on the training device, with gradients; a batched Prim's algorithm
in torch (k vectorised steps) is the exact same H0 computation in that shape, and the unit test
checks it against the engine. Cost: one (T, T) distance matmul for neighbour selection (no
gradient) plus O(T k^2 C) for the neighbourhoods: linear in T apart from that matmul.

L_topo (``topo`` loss term): mean over tokens of the soft-thresholded total persistence of the
short bars, ``sum_e sigmoid((threshold - w_e) / temperature) * w_e / k`` over the tree edges
``w_e`` of ``P_i``: it contracts noise-scale components and leaves long-lived structure alone.

``mode="knn_mean"`` is the control of equal cost: same neighbours, uniform weights, no
persistence (and no topo term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FILTER_MODES = ("mst", "knn_mean", "none")
_FAR = 1e4  # stands for "no edge": sigmoid((threshold - _FAR) / temperature) == 0 exactly
_DIST_EPS = 1e-3  # smoothed distance sqrt(d^2 + eps^2) - eps: bounded slope at d = 0


def causal_knn(u: torch.Tensor, k: int, q0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, T, k) of the k nearest earlier rows of ``u`` (B, L, C) for the query rows
    ``q0 .. L-1`` (T = L - q0), and a validity mask (row i has only i earlier rows). Invalid slots
    point at the row itself. No gradient: selection is discrete."""
    with torch.no_grad():
        q = u[:, q0:]
        d2 = (q.square().sum(-1, keepdim=True) + u.square().sum(-1).unsqueeze(1)
              - 2.0 * q @ u.transpose(1, 2)).float()
        rows = torch.arange(q0, u.size(1), device=u.device).unsqueeze(1)
        earlier = torch.arange(u.size(1), device=u.device).unsqueeze(0) < rows
        kk = min(k, u.size(1))
        # stable sort, not topk: ties (repeated tokens) resolve to the earliest position however
        # long the row is, so one pass and token-by-token decoding pick the same neighbours
        vals, idx = d2.masked_fill(~earlier, float("inf")).sort(dim=-1, stable=True)
        vals, idx = vals[..., :kk], idx[..., :kk]
        if kk < k:  # fewer rows than k: pad with invalid slots
            vals = F.pad(vals, (0, k - kk), value=float("inf"))
            idx = F.pad(idx, (0, k - kk))
        valid = torch.isfinite(vals)
        idx = torch.where(valid, idx, rows.expand_as(idx))
    return idx, valid


def local_h0(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H0 persistence of many small weighted graphs by a batched Prim's algorithm from node 0.

    ``dist``: (N, M, M) symmetric edge lengths (``>= _FAR`` = no edge). Returns the minimum
    spanning tree's edge lengths (N, M-1) in the order Prim adds them (the finite H0 bars are
    ``[0, w)``) and, per node, its minimax distance from node 0 (N, M), both differentiable in
    ``dist`` (piecewise: the tree is fixed where no two edge lengths tie).
    """
    n, m, _ = dist.shape
    rows = torch.arange(n, device=dist.device)
    in_tree = torch.zeros(n, m, dtype=torch.bool, device=dist.device)
    in_tree[:, 0] = True
    best = dist[:, 0]  # distance from the tree to every node
    parent = torch.zeros(n, m, dtype=torch.long, device=dist.device)
    minimax = dist.new_zeros(n, m)
    edges = []
    for _ in range(m - 1):
        j = best.masked_fill(in_tree, float("inf")).argmin(dim=1)
        w = best[rows, j]
        edges.append(w)
        reach = torch.maximum(w, minimax[rows, parent[rows, j]])
        minimax = minimax.index_put((rows, j), reach)
        in_tree = in_tree.index_put((rows, j), torch.ones_like(j, dtype=torch.bool))
        via_j = dist[rows, j]
        closer = via_j < best
        best = torch.where(closer, via_j, best)
        parent = torch.where(closer, j.unsqueeze(1), parent)
    return torch.stack(edges, dim=1) if edges else dist.new_zeros(n, 0), minimax


class TopoFilter(nn.Module):
    """``forward(x, start_pos) -> (filtered x, L_topo)``; see the module docstring.

    For cached decoding it keeps the embeddings and neighbour lists of the tokens seen so far
    (``setup_cache`` / ``clear_cache``), so a new token finds its neighbours among them.
    """

    def __init__(self, k: int, threshold: float, temperature: float, mode: str = "mst") -> None:
        super().__init__()
        if mode not in FILTER_MODES:
            raise ValueError(f"TopoFilter mode must be one of {FILTER_MODES}, got {mode!r}")
        self.k, self.threshold, self.temperature, self.mode = k, threshold, temperature, mode
        self.cache: dict[str, torch.Tensor] | None = None

    def setup_cache(self, batch_size: int, max_len: int, n_embd: int,
                    device: torch.device, dtype: torch.dtype) -> None:
        self.cache = {"x": torch.zeros(batch_size, max_len, n_embd, device=device, dtype=dtype),
                      "knn": torch.zeros(batch_size, max_len, self.k, device=device,
                                         dtype=torch.long)}

    def clear_cache(self) -> None:
        self.cache = None

    def _weights(self, u: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
                 table: torch.Tensor, q0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge weights (B, T, k) of the neighbours and L_topo, from local H0 persistence."""
        b, t, k = idx.shape
        self_pos = torch.arange(q0, q0 + t, device=u.device).view(1, t, 1).expand(b, t, 1)
        nodes = torch.cat([self_pos, idx], dim=2)  # (B, T, M): node 0 is the token itself
        node_ok = torch.cat([torch.ones_like(valid[..., :1]), valid], dim=2)
        batch = torch.arange(b, device=u.device).view(b, 1, 1)
        pts = u[batch, nodes]  # (B, T, M, C)
        # unit vectors: |a - b|^2 = 2 - 2 a.b (a Gram matmul; no (M, M, C) difference tensor)
        d2 = (2.0 - 2.0 * pts @ pts.transpose(-1, -2)).clamp_min(0.0)
        dist = (d2 + _DIST_EPS**2).sqrt() - _DIST_EPS  # (B, T, M, M)
        # graph edges: the star to node 0, and a-b where either is among the other's k-NN
        nbrs = table[batch, nodes]  # (B, T, M, k)
        linked = (nbrs.unsqueeze(3) == nodes.view(b, t, 1, -1, 1)).any(-1)  # b in kNN(a)
        adj = linked | linked.transpose(2, 3)
        adj[..., 0, :] = True
        adj[..., :, 0] = True
        adj &= node_ok.unsqueeze(3) & node_ok.unsqueeze(2)
        dist = dist.masked_fill(~adj, _FAR)
        edges, minimax = local_h0(dist.flatten(0, 1))
        soft = lambda d: torch.sigmoid((self.threshold - d) / self.temperature)  # noqa: E731
        weights = soft(minimax[:, 1:]).view(b, t, k) * valid
        short = soft(edges) * edges * (edges < _FAR / 2)
        return weights, short.sum(-1).mean() / k

    def forward(self, x: torch.Tensor, start_pos: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        zero = x.new_zeros((), dtype=torch.float32)
        if self.mode == "none":
            return x, zero
        b, t, _ = x.shape
        q0 = start_pos or 0
        full = x
        if start_pos is not None:
            if self.cache is None:
                raise RuntimeError("start_pos given but no filter cache: call setup_kv_cache() first")
            self.cache["x"][:, q0:q0 + t] = x
            full = self.cache["x"][:, :q0 + t]
        u = F.normalize(full.float(), dim=-1)
        idx, valid = causal_knn(u, self.k, q0)
        if start_pos is not None:
            self.cache["knn"][:, q0:q0 + t] = idx
            table = self.cache["knn"][:, :q0 + t]
        else:
            table = idx
        if self.mode == "knn_mean":
            weights, loss = valid.to(u.dtype), zero
        else:
            weights, loss = self._weights(u, idx, valid, table, q0)
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        neigh = full[batch, idx]  # (B, T, k, C)
        num = x + (weights.unsqueeze(-1).to(x.dtype) * neigh).sum(2)
        return num / (1.0 + weights.sum(-1, keepdim=True)).to(x.dtype), loss
