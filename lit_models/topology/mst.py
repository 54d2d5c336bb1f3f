"""Euclidean minimum spanning tree (EMST) of a point cloud, exact, without an N x N matrix.

H0 persistence of a Rips filtration is exactly the MST: N-1 bars (0, w) for the tree's edge
lengths w, plus one infinite bar. GUDHI has no EMST and scipy's ``minimum_spanning_tree`` needs
the graph, so this module builds the graph's candidate edges itself (hand-written, justified:
no installed library computes an exact EMST of 10^6 points) with a certified Borůvka:

* Every round each component needs its shortest edge to another component (cut property).
  A point's k nearest neighbours (one kd-tree query for the whole cloud, reused every round)
  give its nearest *foreign* point whenever one of them lies in another component. A point
  whose k neighbours are all in its own component has no foreign point closer than its k-th
  neighbour distance, which is a lower bound. A component's candidate is *certified* when no
  member's lower bound is below it.
* Uncertified components: members that could still beat the candidate are queried again with a
  larger k; what remains (e.g. a cluster far from everything, interior points whose k-NN ball
  sits inside the cluster) is settled by an exact bichromatic closest-pair query between those
  members and the foreign points inside their bounding box grown by the current bound.
* The union of the certified edges of all rounds contains an MST; scipy's MST of that sparse
  union (about 2N edges) gives the tree.

Worst case: many far-apart clusters make one fallback per cluster and round, each scanning
all N points (O(N D)); thousands of isolated clusters of 10^6 points would be slow.

Oracles: a scipy ``cKDTree`` for D <= ``KDTREE_MAX_DIM``; above that, exact brute force in
chunks (BLAS matmuls; O(N^2 D) time, O(chunk * N) memory), so only for moderate N.
``exact=False`` stops after the k-NN stage: the MST of the k-NN graph, with its components
joined through one representative each. Its sorted edge lengths are elementwise >= the exact
ones (a spanning tree of a subgraph; the greedy tree is elementwise minimal).

Measured here (2 cores, ``nice -n 19`` beside a training run, so upper bounds; exact mode,
``workers=2``): 1,000,000 uniform points in [0,1]^3: 10.2 s, 0.6 GB peak RSS; 1,000,000 points
in 5 Gaussian clusters (the isolated-component fallback): 12.5 s; 100,000 uniform: 0.5 s;
5,000 points in R^64 (brute force): 0.6 s. Checked against Rips/alpha H0 up to 20,000 points.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from scipy.spatial import cKDTree

KDTREE_MAX_DIM = 10  # kd-trees stop pruning well above ~10 dimensions
KNN_K = 12  # neighbours per point kept for all rounds (memory: N * k * 16 bytes)
REQUERY_KS = (48, 192)  # larger k for members that could still beat their component's candidate
BRUTE_CHUNK_BYTES = 64 * 2**20  # per distance block in the brute-force oracle


class _KDTreeOracle:
    """k-NN and closest pairs from scipy's cKDTree (low dimensions)."""

    def __init__(self, x: np.ndarray, workers: int) -> None:
        self.x, self.workers = x, workers
        self.tree = cKDTree(x)

    def knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, i = self.tree.query(self.x[q], k=k + 1, workers=self.workers)
        return _drop_self(d, i, q, k)

    def closest(self, a: np.ndarray, b: np.ndarray, ub: float) -> tuple[float, int, int]:
        """Shortest pair (distance, u in a, v in b) no longer than ``ub``; inf if none."""
        if len(a) == 0 or len(b) == 0:
            return np.inf, -1, -1
        swap = len(a) > len(b)  # tree over the smaller set, query the larger one
        tree_set, query_set = (b, a) if swap else (a, b)
        d, j = cKDTree(self.x[tree_set]).query(self.x[query_set], k=1, workers=self.workers,
                                                distance_upper_bound=ub * (1 + 1e-9) + 1e-300)
        m = int(np.argmin(d))
        if not np.isfinite(d[m]):
            return np.inf, -1, -1
        near, far = int(tree_set[j[m]]), int(query_set[m])
        return (float(d[m]), far, near) if swap else (float(d[m]), near, far)


class _BruteOracle:
    """Exact k-NN and closest pairs by chunked matmuls (any dimension, moderate N)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x - x.mean(axis=0)  # centring keeps the |a|^2 + |b|^2 - 2ab trick accurate
        self.sq = (self.x * self.x).sum(axis=1)

    def _rows(self, floats_per_row: int) -> int:
        return max(1, BRUTE_CHUNK_BYTES // (8 * max(floats_per_row, 1)))

    def _d2(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = self.sq[a, None] + self.sq[None, b] - 2.0 * (self.x[a] @ self.x[b].T)
        return np.maximum(d2, 0.0)

    def _exact(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(self.x[a] - self.x[b], axis=-1)

    def knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.x)
        cols = np.arange(n)
        out_i = np.empty((len(q), k), dtype=np.int64)
        out_d = np.empty((len(q), k))
        step = self._rows(max(n, k * self.x.shape[1]))
        for s in range(0, len(q), step):
            rows = q[s:s + step]
            d2 = self._d2(rows, cols)
            d2[np.arange(len(rows)), rows] = np.inf  # not its own neighbour
            part = np.argpartition(d2, k - 1, axis=1)[:, :k]
            out_i[s:s + step] = part
            out_d[s:s + step] = self._exact(rows[:, None], part)  # exact, not the Gram value
        order = np.argsort(out_d, axis=1, kind="stable")
        return np.take_along_axis(out_d, order, 1), np.take_along_axis(out_i, order, 1)

    def closest(self, a: np.ndarray, b: np.ndarray, ub: float) -> tuple[float, int, int]:
        """Shortest pair (distance, u in a, v in b); ``ub`` unused (no pruning in brute force)."""
        best, bu, bv = np.inf, -1, -1
        if len(a) == 0 or len(b) == 0:
            return best, bu, bv
        step = self._rows(len(b))
        for s in range(0, len(a), step):
            rows = a[s:s + step]
            d2 = self._d2(rows, b)
            r, c = np.unravel_index(int(np.argmin(d2)), d2.shape)
            d = float(self._exact(rows[r:r + 1], b[c:c + 1])[0])
            if d < best:
                best, bu, bv = d, int(rows[r]), int(b[c])
        return best, bu, bv


def _drop_self(d: np.ndarray, i: np.ndarray, q: np.ndarray, k: int):
    """Remove each query's own index from its k+1 neighbours (duplicates may hide it)."""
    is_self = i == q[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    is_self[is_self.cumsum(axis=1) > 1] = False  # keep exactly one dropped entry per row
    keep = ~is_self
    return d[keep].reshape(len(q), k), i[keep].reshape(len(q), k)


def _first_foreign(nd: np.ndarray, ni: np.ndarray, own: np.ndarray, labels: np.ndarray):
    """Per row: distance/index of the first neighbour in another component, or (inf, -1)."""
    foreign = labels[ni] != own[:, None]
    has = foreign.any(axis=1)
    first = foreign.argmax(axis=1)
    rows = np.arange(len(nd))
    return (np.where(has, nd[rows, first], np.inf), np.where(has, ni[rows, first], -1), has)


def _update_best(best_d, best_u, best_v, comp, u, v, d) -> None:
    """Lower each component's best edge with candidates (u, v, d) of components ``comp``."""
    ok = np.isfinite(d)
    comp, u, v, d = comp[ok], u[ok], v[ok], d[ok]
    np.minimum.at(best_d, comp, d)
    win = d <= best_d[comp]
    best_u[comp[win]] = u[win]
    best_v[comp[win]] = v[win]


def euclidean_mst(points: np.ndarray, exact: bool = True, k: int = KNN_K,
                  workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Edges (N-1, 2) and lengths (N-1,) of a Euclidean MST of ``points`` (N, D), float64.

    ``exact=False``: MST of the k-NN graph (components joined via representatives); its sorted
    lengths are elementwise upper bounds of the exact ones. ``workers``: kd-tree threads.
    """
    x = np.ascontiguousarray(points, dtype=np.float64)
    n, dim = x.shape
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    oracle = _KDTreeOracle(x, workers) if dim <= KDTREE_MAX_DIM else _BruteOracle(x)
    k = int(min(max(k, 1), n - 1))
    nd, ni = oracle.knn(np.arange(n), k)
    if not exact:
        return _knn_graph_mst(x, nd, ni)

    labels = np.arange(n)
    edges_u, edges_v, edges_d = [], [], []
    n_comp = n
    while n_comp > 1:
        best_d = np.full(n_comp, np.inf)
        best_u = np.full(n_comp, -1, dtype=np.int64)
        best_v = np.full(n_comp, -1, dtype=np.int64)
        cand_d, cand_j, has = _first_foreign(nd, ni, labels, labels)
        _update_best(best_d, best_u, best_v, labels, np.arange(n), cand_j, cand_d)
        # members whose nearest foreign point may lie beyond their k-NN yet beat the candidate
        pending = np.flatnonzero(~has & (nd[:, -1] < best_d[labels]))
        for kk in REQUERY_KS:
            refine = pending[np.isfinite(best_d[labels[pending]])]  # isolated ones: fallback
            if len(refine) == 0 or not k < kk <= n - 1:
                continue
            qd, qi = oracle.knn(refine, kk)
            own = labels[refine]
            cd, cj, h = _first_foreign(qd, qi, own, labels)
            _update_best(best_d, best_u, best_v, own, refine, cj, cd)
            settled = refine[h | (qd[:, -1] >= best_d[own])]
            pending = np.setdiff1d(pending, settled, assume_unique=True)
        pending = pending[nd[pending, -1] < best_d[labels[pending]]]
        for c in np.unique(labels[pending]):  # exact fallback, one component at a time
            a = pending[labels[pending] == c]
            _settle_component(x, oracle, labels, c, a, best_d, best_u, best_v)
        edges_u.append(best_u)
        edges_v.append(best_v)
        edges_d.append(best_d)
        graph = coo_matrix((np.ones(n_comp), (labels[best_u], labels[best_v])),
                           shape=(n_comp, n_comp))
        n_comp, merged = connected_components(graph, directed=False)
        labels = merged[labels]
    return _mst_of_edges(n, np.concatenate(edges_u), np.concatenate(edges_v),
                         np.concatenate(edges_d))


def _settle_component(x, oracle, labels, c, a, best_d, best_u, best_v) -> None:
    """Exact shortest edge from members ``a`` of component ``c`` to any other component."""
    foreign = labels != c
    ub = best_d[c]
    if not np.isfinite(ub):  # no candidate yet: the nearest foreign point of one member
        fidx = np.flatnonzero(foreign)
        dist = np.linalg.norm(x[fidx] - x[a[0]], axis=1)
        j = int(np.argmin(dist))
        ub, best_u[c], best_v[c] = float(dist[j]), a[0], fidx[j]
        best_d[c] = ub
    lo, hi = x[a].min(axis=0) - ub, x[a].max(axis=0) + ub
    b = np.flatnonzero(foreign & np.all((x >= lo) & (x <= hi), axis=1))
    d, u, v = oracle.closest(a, b, ub)
    if d < best_d[c]:
        best_d[c], best_u[c], best_v[c] = d, u, v


def _mst_of_edges(n: int, u: np.ndarray, v: np.ndarray, d: np.ndarray):
    """scipy MST of a sparse edge list (deduplicated; zero lengths kept as real edges)."""
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    key = lo.astype(np.int64) * n + hi
    order = np.lexsort((d, key))
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    sel = order[first]
    w = np.where(d[sel] > 0, d[sel], np.finfo(np.float64).smallest_subnormal)  # 0 = no edge
    tree = minimum_spanning_tree(coo_matrix((w, (lo[sel], hi[sel])), shape=(n, n))).tocoo()
    lengths = np.where(tree.data > np.finfo(np.float64).tiny, tree.data, 0.0)
    edges = np.stack([tree.row, tree.col], axis=1).astype(np.int64)
    return edges, lengths


def _knn_graph_mst(x: np.ndarray, nd: np.ndarray, ni: np.ndarray):
    """MST of the k-NN graph; components joined through the MST of one point per component."""
    n, k = ni.shape
    u = np.repeat(np.arange(n), k)
    v, d = ni.reshape(-1), nd.reshape(-1)
    n_comp, labels = connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)),
                                          directed=False)
    if n_comp > 1:
        reps = np.unique(labels, return_index=True)[1]
        rep_edges, rep_d = euclidean_mst(x[reps], exact=True)
        u = np.concatenate([u, reps[rep_edges[:, 0]]])
        v = np.concatenate([v, reps[rep_edges[:, 1]]])
        d = np.concatenate([d, rep_d])
    return _mst_of_edges(n, u, v, d)
