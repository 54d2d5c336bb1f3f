"""Neural sheaf diffusion on graphs (Bodnar et al. 2022, "Neural Sheaf Diffusion"), with separate
send / receive restriction maps per edge, a sparse sheaf Laplacian in torch and adaptive pruning.

A cellular sheaf on a graph gives every node and edge a stalk R^d and every (node, edge) pair a
restriction map (d x d). For an edge e = (u, v) the *send* map ``S_e`` (at its first node) and
the *receive* map ``R_e`` (at its second) are predicted by two separate small layers from the
endpoint features (``tanh(Linear([h_u, h_v]))`` and ``tanh(Linear([h_v, h_u]))``). The
coboundary ``δ`` (E d x N d) has ``(δ y)_e = R_e y_v - S_e y_u``; the sheaf Laplacian is
``L = δ^T δ`` (symmetric positive semi-definite by construction), used normalised,
``Δ = D^{-1/2} L D^{-1/2}`` with ``D = diag(L) + 1`` (a congruence: still symmetric PSD).
Two backends compute ``Δ y`` (same result, tested): ``"sparse"`` builds ``δ`` as a torch sparse
tensor whose values carry the gradients and multiplies with ``torch.sparse.mm`` (backprop
through the sparse ops); ``"block"`` (default) does the same product edge by edge with
``einsum`` + ``index_add``, ~10x faster on CPU at 100k nodes (docs/tcs-v9.md).

Pruning: restriction-map entries with ``|value| < prune`` are dropped (from ``δ`` in the sparse
backend: fewer non-zeros; zeroed in the block backend); ``δ^T δ`` of the pruned ``δ`` is still
PSD.

Diffusion layer (NSD, discrete time): ``X <- X - elu(Δ (I ⊗ W1) X W2)``, X of shape (N, d, f).
With identity maps (``maps="identity"``) ``L`` is the graph Laplacian ⊗ I_d: ordinary
graph-Laplacian diffusion, the baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from lhp.errors import UserError
from lit_models.topology.hodge import quiet_sparse_csr
from lit_models.topology.persistence import as_numpy_points

MAPS = ("sheaf", "identity")
BACKENDS = ("block", "sparse")


def knn_graph(points: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """Undirected k-nearest-neighbour graph (scipy kd-tree): (2, E) long tensor of unique edges
    u < v. Duplicate points are neighbours at distance 0 (no self-loops)."""
    try:
        x = as_numpy_points(points)
    except ValueError as err:
        raise UserError(f"knn_graph: {err}") from err
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    n = len(x)
    if n < 2:
        return torch.zeros((2, 0), dtype=torch.long)
    kk = min(k + 1, n)
    _, nbr = cKDTree(x).query(x, k=kk)
    u = np.repeat(np.arange(n), kk)
    v = nbr.reshape(-1)
    keep = u != v  # the point itself (with duplicates it need not be the first neighbour)
    pairs = np.unique(np.sort(np.stack([u[keep], v[keep]], axis=1), axis=1), axis=0)
    return torch.as_tensor(pairs.T.copy(), dtype=torch.long)


def _check_graph(edge_index: torch.Tensor, send: torch.Tensor, recv: torch.Tensor) -> int:
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise UserError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    e = edge_index.shape[1]
    if send.shape != recv.shape or send.ndim != 3 or send.shape[0] != e \
            or send.shape[1] != send.shape[2]:
        raise UserError(f"send/receive maps must both have shape (E={e}, d, d), got "
                        f"{tuple(send.shape)} and {tuple(recv.shape)}")
    return send.shape[1]


def sheaf_coboundary(edge_index: torch.Tensor, send: torch.Tensor, recv: torch.Tensor,
                     n_nodes: int, prune: float = 0.0) -> torch.Tensor:
    """``δ`` as a sparse COO (E d, N d): ``(δ y)_e = recv_e y_v - send_e y_u``; entries with
    ``|value| < prune`` dropped. Gradients flow to the kept map entries."""
    d = _check_graph(edge_index, send, recv)
    e = edge_index.shape[1]
    a = torch.arange(d, device=send.device)
    row = (torch.arange(e, device=send.device)[:, None, None] * d + a[None, :, None]).expand(e, d, d)
    cols = [(edge_index[i][:, None, None] * d + a[None, None, :]).expand(e, d, d) for i in (0, 1)]
    rows = torch.cat([row.reshape(-1), row.reshape(-1)])
    cols_all = torch.cat([cols[0].reshape(-1), cols[1].reshape(-1)])
    values = torch.cat([-send.reshape(-1), recv.reshape(-1)])
    if prune > 0:
        keep = values.detach().abs() >= prune
        rows, cols_all, values = rows[keep], cols_all[keep], values[keep]
    return torch.sparse_coo_tensor(torch.stack([rows, cols_all]), values, (e * d, n_nodes * d),
                                   check_invariants=False)


def sheaf_laplacian(edge_index: torch.Tensor, send: torch.Tensor, recv: torch.Tensor,
                    n_nodes: int, prune: float = 0.0) -> torch.Tensor:
    """The sheaf Laplacian ``δ^T δ`` as a sparse (N d, N d) tensor (torch.sparse.mm)."""
    delta = sheaf_coboundary(edge_index, send, recv, n_nodes, prune).coalesce()
    return torch.sparse.mm(delta.t(), delta)


def prune_maps(maps: torch.Tensor, prune: float) -> torch.Tensor:
    """``maps`` with entries ``|value| < prune`` set to 0 (the mask carries no gradient)."""
    return maps if prune <= 0 else maps * (maps.detach().abs() >= prune)


def sheaf_laplacian_apply(edge_index: torch.Tensor, send: torch.Tensor, recv: torch.Tensor,
                          y: torch.Tensor, backend: str = "block", prune: float = 0.0) -> torch.Tensor:
    """``δ^T δ y`` for node states y (N, d, f).

    ``"sparse"``: ``δ`` and ``δ^T`` as torch CSR tensors, ``torch.sparse.mm(..., reduce="sum")``
    (whose backward reaches the sparse values; the COO ``torch.sparse.mm`` backward builds a
    dense (E d x N d) gradient: 1 TB at 100k nodes). ``"block"``: the same product edge by edge
    with ``einsum`` on gathered (d x f) node blocks and ``index_add`` back to the nodes, ~10x
    faster on CPU at 100k nodes (measured, docs/tcs-v9.md) because it moves d x f blocks
    instead of scalars. Both give the same result (tested)."""
    n, d, f = y.shape
    if backend == "sparse":
        delta = sheaf_coboundary(edge_index, send, recv, n, prune).coalesce()
        with quiet_sparse_csr():
            z = torch.sparse.mm(delta.to_sparse_csr(), y.reshape(n * d, f), reduce="sum")
            out = torch.sparse.mm(delta.t().coalesce().to_sparse_csr(), z, reduce="sum")
        return out.view(n, d, f)
    if backend != "block":
        raise UserError(f"backend must be one of {BACKENDS}, got {backend!r}")
    send, recv = prune_maps(send, prune), prune_maps(recv, prune)
    u, v = edge_index
    z = torch.einsum("eab,ebf->eaf", recv, y[v]) - torch.einsum("eab,ebf->eaf", send, y[u])
    return (torch.zeros_like(y).index_add(0, v, torch.einsum("eba,ebf->eaf", recv, z))
            .index_add(0, u, -torch.einsum("eba,ebf->eaf", send, z)))


def normalized_diffusion(edge_index: torch.Tensor, send: torch.Tensor, recv: torch.Tensor,
                         y: torch.Tensor, backend: str = "block", prune: float = 0.0) -> torch.Tensor:
    """``D^{-1/2} δ^T δ D^{-1/2} y`` with ``D = diag(δ^T δ) + 1`` (pruned maps)."""
    n, d, _ = y.shape
    sq_send, sq_recv = (prune_maps(m, prune).square().sum(dim=1) for m in (send, recv))
    diag = y.new_zeros(n, d).index_add(0, edge_index[0], sq_send).index_add(0, edge_index[1], sq_recv)
    scale = (diag + 1.0).rsqrt()[..., None]
    return scale * sheaf_laplacian_apply(edge_index, send, recv, scale * y, backend, prune)


class SheafDiffusion(nn.Module):
    """Node classifier by sheaf (or, with ``maps="identity"``, graph-Laplacian) diffusion.

    ``encode`` (features -> N x d x f), ``layers`` diffusion steps each with its own learned
    send / receive map predictors, then ``decode`` (N x d f -> classes).
    """

    def __init__(self, in_dim: int, n_classes: int, stalk_dim: int = 3, channels: int = 8,
                 layers: int = 2, maps: str = "sheaf", prune: float = 0.0,
                 dropout: float = 0.0, backend: str = "block") -> None:
        super().__init__()
        if maps not in MAPS:
            raise UserError(f"maps must be one of {MAPS}, got {maps!r}")
        if min(in_dim, n_classes, stalk_dim, channels, layers) < 1:
            raise UserError("in_dim, n_classes, stalk_dim, channels and layers must be >= 1")
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if prune < 0:
            raise UserError(f"prune must be >= 0, got {prune}")
        self.d, self.f, self.maps, self.prune = stalk_dim, channels, maps, prune
        self.dropout, self.backend = dropout, backend
        width = stalk_dim * channels
        self.encode = nn.Linear(in_dim, width)
        self.decode = nn.Linear(width, n_classes)
        self.w1 = nn.ParameterList(nn.Parameter(torch.eye(stalk_dim)) for _ in range(layers))
        self.w2 = nn.ModuleList(nn.Linear(channels, channels, bias=False) for _ in range(layers))
        if maps == "sheaf":
            self.send = nn.ModuleList(nn.Linear(2 * width, stalk_dim ** 2) for _ in range(layers))
            self.recv = nn.ModuleList(nn.Linear(2 * width, stalk_dim ** 2) for _ in range(layers))
        self.last_kept = 1.0  # fraction of coboundary entries kept by pruning (last forward)

    def restriction_maps(self, h: torch.Tensor, edge_index: torch.Tensor,
                         layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Send and receive maps (E, d, d) of one layer from the node states h (N, d f)."""
        e, d = edge_index.shape[1], self.d
        if self.maps == "identity":
            eye = torch.eye(d, dtype=h.dtype, device=h.device).expand(e, d, d)
            return eye, eye
        hu, hv = h[edge_index[0]], h[edge_index[1]]
        send = torch.tanh(self.send[layer](torch.cat([hu, hv], dim=1))).view(e, d, d)
        recv = torch.tanh(self.recv[layer](torch.cat([hv, hu], dim=1))).view(e, d, d)
        return send, recv

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = F.dropout(self.encode(x), self.dropout, self.training).view(n, self.d, self.f)
        for layer, (w1, w2) in enumerate(zip(self.w1, self.w2, strict=True)):
            send, recv = self.restriction_maps(h.reshape(n, -1), edge_index, layer)
            if self.prune > 0:
                kept = sum(int((m.detach().abs() >= self.prune).sum()) for m in (send, recv))
                self.last_kept = kept / max(2 * send.numel(), 1)
            y = w2(torch.einsum("ab,nbf->naf", w1, h))
            h = h - F.elu(normalized_diffusion(edge_index, send, recv, y, self.backend, self.prune))
            h = F.dropout(h, self.dropout, self.training)
        return self.decode(h.reshape(n, -1))


def n_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
